"""Where a batch's files go: a local folder or any fsspec URL, addressed by safe relative paths.

Credentials (`storage_options`, a password in the URL) never appear in `repr` or error messages.
"""

import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fsspec.core import url_to_fs  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from comfybatch.errors import ComfyBatchError, ConfigError, StorageError, UnsafePath

T = TypeVar("T")

# Object stores publish an object only when its upload completes: a direct write is already atomic,
# while a "move" there is copy + delete. They also have no folders to create.
_OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oci", "oss", "memory"})
_TEMP_SUFFIX = ".part"
_REDACTED = "***"
_MIN_SECRET_CHARS = 4  # shorter option values ("1", True) would redact ordinary text


def check_relpath(relpath: str, *, allow_empty: bool = False) -> str:
    """Return `relpath` if it is a safe store-relative POSIX path (`"<batch>/<file>"`).

    Rejects absolute paths, `..`, `.` and empty segments, backslashes and control characters
    (NUL included), so that no path can leave the store, also when it comes from an HTTP request.

    Raises:
        UnsafePath.
    """
    if allow_empty and relpath == "":
        return ""
    if not relpath:
        raise UnsafePath("path is empty")
    if relpath.startswith("/"):
        raise UnsafePath(f"path {relpath!r} is absolute; a path relative to the store is expected")
    path = relpath.removesuffix("/") if allow_empty else relpath
    if "\\" in path:
        raise UnsafePath(f"path {relpath!r} contains a backslash")
    if any(ord(char) < 0x20 or char == "\x7f" for char in path):
        raise UnsafePath(f"path {relpath!r} contains a control character")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise UnsafePath(f"path {relpath!r} has an empty, '.' or '..' segment")
    return path


class OutputStore:
    """A folder, local or remote, that holds the outputs of batches.

    Example:
        store = OutputStore("s3://renders/comfybatch", storage_options={"profile": "render"})
        uri = store.write_bytes("my-batch/manifest.csv", data)
    """

    def __init__(self, location: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> None:
        """Open the store at a local path or an fsspec URL (`file://`, `memory://`, `s3://bucket/prefix`).

        Raises:
            ConfigError: unknown protocol, or its fsspec implementation is not installed.
        """
        text = os.fspath(location)
        options = dict(storage_options or {})
        self._secrets = _secret_strings([options, urlsplit(text).password or ""])
        self._location = self._redact(text)
        catch = (ImportError, ValueError, OSError)
        what = f"cannot open output store {self._location!r}"
        fs, root = self._run(what, lambda: url_to_fs(text, **options), error=ConfigError, catch=catch)
        self._fs: Any = fs
        self._errors: tuple[type[Exception], ...] = (OSError, *_client_errors(fs))
        self._is_local = isinstance(fs, LocalFileSystem)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._is_object_store = bool(protocols & _OBJECT_STORE_PROTOCOLS)
        # Local roots are resolved so that the symlink check in `_path` compares real paths.
        self._root: str = (Path(root).resolve().as_posix() if self._is_local else str(root)).rstrip("/")

    def __repr__(self) -> str:
        return f"OutputStore({self._location!r})"

    @property
    def location(self) -> str:
        """The location this store was opened at, without any password."""
        return self._location

    @property
    def is_local(self) -> bool:
        """Whether files live on the local filesystem (see `local_path`)."""
        return self._is_local

    def uri(self, relpath: str) -> str:
        """Where `relpath` is, as a user can open it: an absolute path locally, else a URL.

        Raises:
            UnsafePath.
        """
        path = self._path(relpath)
        return path if self._is_local else str(self._fs.unstrip_protocol(path))

    def relpath_of(self, uri: str) -> str | None:
        """The store-relative path of a `uri()` result, or None if `uri` is not inside this store."""
        if self._is_local:
            uri = uri.removeprefix("file://")
        base = self.uri("x")[:-1]  # the store's own prefix, trailing slash included
        if not uri.startswith(base):
            return None
        try:
            return check_relpath(uri[len(base) :])
        except UnsafePath:
            return None

    def local_path(self, relpath: str) -> Path | None:
        """The local path of `relpath`, or None when the store is not on the local filesystem.

        Raises:
            UnsafePath.
        """
        return Path(self._path(relpath)) if self._is_local else None

    def exists(self, relpath: str) -> bool:
        """Whether a file or folder exists at `relpath`.

        Raises:
            UnsafePath, StorageError.
        """
        path = self._path(relpath)
        return bool(self._run(self._what("check", relpath), lambda: self._fs.exists(path)))

    def size(self, relpath: str) -> int:
        """The size of the file at `relpath` in bytes.

        Raises:
            UnsafePath, StorageError: also when there is no such file.
        """
        path = self._path(relpath)
        size = self._run(self._what("measure", relpath), lambda: self._fs.size(path))
        if size is None:
            raise StorageError(self._what("measure", relpath) + ": size unknown")
        return int(size)

    def read_bytes(self, relpath: str) -> bytes:
        """The content of the file at `relpath`.

        Raises:
            UnsafePath, StorageError: also when there is no such file.
        """
        path = self._path(relpath)
        return bytes(self._run(self._what("read", relpath), lambda: self._fs.cat_file(path)))

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write `data` to `relpath` atomically where the filesystem allows; return its `uri`.

        Raises:
            UnsafePath, StorageError.
        """
        return self._write(relpath, lambda target: self._fs.pipe_file(target, bytes(data)))

    def put_file(self, local_path: str | os.PathLike[str], relpath: str) -> str:
        """Copy a local file to `relpath` atomically where the filesystem allows; return its `uri`.

        Raises:
            UnsafePath, StorageError: also when `local_path` cannot be read.
        """
        source = os.fspath(local_path)
        return self._write(relpath, lambda target: self._fs.put_file(source, target))

    def move(self, source: str, target: str) -> bool:
        """Move a file within the store; False when `source` is already gone (someone else moved it).

        Atomic on a local filesystem (a rename), so two claimants never both get the file.

        Raises:
            UnsafePath, StorageError.
        """
        old, new = self._path(source), self._path(target)
        if self._is_local:
            try:
                Path(new).parent.mkdir(parents=True, exist_ok=True)
                os.rename(old, new)
            except FileNotFoundError:
                return False
            except OSError as exc:
                message, cause = self._describe(self._what("move", source), exc)
                raise StorageError(message) from cause
            return True
        if not self.exists(source):
            return False
        self._run(self._what("move", source), lambda: self._fs.mv(old, new))
        return True

    def delete(self, relpath: str) -> None:
        """Remove a file if it exists.

        Raises:
            UnsafePath, StorageError.
        """
        path = self._path(relpath)
        self._run(self._what("delete", relpath), lambda: self._fs.rm_file(path) if self._fs.exists(path) else None)

    def _write(self, relpath: str, write: Callable[[str], object]) -> str:
        path = self._path(relpath)
        if self._is_object_store:
            self._run(self._what("write", relpath), lambda: write(path))
            return self.uri(relpath)
        parent, _, name = path.rpartition("/")
        temp = f"{parent}/.{name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"

        def write_then_move() -> None:
            self._fs.makedirs(parent, exist_ok=True)
            try:
                write(temp)
                # os.replace is atomic on POSIX and Windows; other filesystems get their best rename.
                if self._is_local:
                    os.replace(temp, path)
                else:
                    self._fs.mv(temp, path)
            except BaseException:
                self._discard(temp)
                raise

        self._run(self._what("write", relpath), write_then_move)
        return self.uri(relpath)

    def _discard(self, path: str) -> None:
        try:
            if self._fs.exists(path):
                self._fs.rm_file(path)
        except OSError:
            pass  # best effort; the original error is the one worth raising

    def _path(self, relpath: str, *, allow_empty: bool = False) -> str:
        """The filesystem path of `relpath`, checked to stay inside the store (symlinks too, locally)."""
        safe = check_relpath(relpath, allow_empty=allow_empty)
        path = f"{self._root}/{safe}" if safe else self._root
        if self._is_local and not Path(path).resolve().is_relative_to(self._root or "/"):
            raise UnsafePath(f"path {relpath!r} leaves the store through a symbolic link")
        return path

    def _run(
        self,
        what: str,
        operation: Callable[[], T],
        *,
        error: type[ComfyBatchError] = StorageError,
        catch: tuple[type[Exception], ...] | None = None,
    ) -> T:
        """Run a filesystem call, turning its failure into `error` with a redacted message."""
        catch = self._errors if catch is None else catch
        try:
            return operation()
        except catch as exc:
            message, cause = self._describe(what, exc)
        # Raised outside the `except` block so that a leaky cause is not kept as `__context__` either.
        raise error(message) from cause

    def _what(self, action: str, relpath: str) -> str:
        return f"cannot {action} {relpath!r} in {self._location!r}"

    def _describe(self, what: str, exc: BaseException) -> tuple[str, BaseException | None]:
        """A redacted message; the cause is chained only if its text holds no secret."""
        detail = str(exc)
        leaks = any(secret in detail or secret in repr(exc) for secret in self._secrets)
        return self._redact(f"{what}: {type(exc).__name__}: {detail}"), None if leaks else exc

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    # Defined last: inside the class body, later annotations would see this method as `list`.
    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of the files under `prefix` (the whole store when empty), sorted.

        Raises:
            UnsafePath, StorageError.
        """
        base = self._path(prefix, allow_empty=True)
        found = self._run(self._what("list", prefix), lambda: self._fs.find(base) if self._fs.exists(base) else [])
        root = self._fs._strip_protocol(self._root or "/").rstrip("/")
        paths = []
        for item in found:
            relpath = str(self._fs._strip_protocol(item)).removeprefix(root).lstrip("/")
            if relpath and not _is_temp(relpath):
                paths.append(relpath)
        return sorted(paths)


def _client_errors(fs: Any) -> tuple[type[Exception], ...]:
    """What the filesystem's own client raises besides `OSError`: s3fs lets botocore's connection errors
    (refused, reset mid-upload, timeouts) through untranslated."""
    if not type(fs).__module__.startswith("s3fs"):
        return ()
    from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]  # installed with s3fs

    return (BotoCoreError,)


def _is_temp(relpath: str) -> bool:
    name = relpath.rpartition("/")[2]
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _secret_strings(values: Iterable[Any]) -> tuple[str, ...]:
    """Every string inside `values` long enough to be a credential, longest first."""
    found: set[str] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str) and len(value) >= _MIN_SECRET_CHARS:
            found.add(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set):
            stack.extend(value)
    return tuple(sorted(found, key=len, reverse=True))
