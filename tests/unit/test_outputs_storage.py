"""OutputStore: local and memory:// stores, atomic writes, path safety and secret hiding."""

import os
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
import pytest
from fsspec.implementations.memory import MemoryFileSystem  # type: ignore[import-untyped]

from comfybatch.errors import ConfigError, StorageError, UnsafePath, is_retryable
from comfybatch.outputs.storage import OutputStore, check_relpath

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


class _LeakyFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """A filesystem whose errors quote its storage options, as a careless driver might."""

    protocol = "comfybatch-leaky"

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> bytes:
        raise PermissionError(f"access denied for {path} with {self.storage_options}")


fsspec.register_implementation(_LeakyFileSystem.protocol, _LeakyFileSystem, clobber=True)


@pytest.fixture
def local_store(tmp_path: Path) -> OutputStore:
    return OutputStore(tmp_path / "out")


def test_output_store_local_round_trips_bytes(local_store: OutputStore, tmp_path: Path) -> None:
    """A local store writes under its folder, reads back, and gives the absolute path as URI."""
    uri = local_store.write_bytes("batch/a.png", b"png-bytes")

    assert uri == str(tmp_path / "out" / "batch" / "a.png")
    assert (local_store.read_bytes("batch/a.png"), local_store.size("batch/a.png")) == (b"png-bytes", 9)
    assert local_store.local_path("batch/a.png") == tmp_path / "out" / "batch" / "a.png"


def test_output_store_memory_round_trips_bytes(memory_store: OutputStore) -> None:
    """A memory:// store writes, reads back, and answers with memory:// URIs and no local path."""
    uri = memory_store.write_bytes("batch/a.png", b"png-bytes")

    assert uri.startswith("memory://")
    assert memory_store.read_bytes("batch/a.png") == b"png-bytes"
    assert memory_store.local_path("batch/a.png") is None


def test_output_store_memory_lists_relative_paths(memory_store: OutputStore) -> None:
    """`list` gives sorted paths relative to the store, under the prefix only."""
    for relpath in ("b/2.png", "b/1.png", "b/sub/3.png", "other/x.png"):
        memory_store.write_bytes(relpath, b"x")

    assert memory_store.list("b") == ["b/1.png", "b/2.png", "b/sub/3.png"]


def test_output_store_local_lists_relative_paths(local_store: OutputStore) -> None:
    """A local store lists the same relative paths as any other store."""
    local_store.write_bytes("b/1.png", b"x")
    local_store.write_bytes("top.csv", b"x")

    assert local_store.list() == ["b/1.png", "top.csv"]


def test_output_store_list_of_absent_prefix_is_empty(memory_store: OutputStore) -> None:
    """Listing a folder that does not exist gives an empty list, not an error."""
    assert memory_store.list("nothing-here") == []


def test_output_store_exists_tells_present_from_absent(memory_store: OutputStore) -> None:
    """`exists` is true for a written file and false for another."""
    memory_store.write_bytes("b/a.png", b"x")

    assert (memory_store.exists("b/a.png"), memory_store.exists("b/z.png")) == (True, False)


def test_output_store_put_file_replaces_without_leftovers(local_store: OutputStore, tmp_path: Path) -> None:
    """`put_file` over an existing file leaves only the new content and no temporary file."""
    local_store.write_bytes("b/a.png", b"old")
    source = tmp_path / "render.png"
    source.write_bytes(b"new")

    local_store.put_file(source, "b/a.png")

    assert local_store.read_bytes("b/a.png") == b"new"
    assert os.listdir(tmp_path / "out" / "b") == ["a.png"]


def test_output_store_failed_put_keeps_previous_file(local_store: OutputStore, tmp_path: Path) -> None:
    """A put that fails midway leaves the previous file intact and no temporary file behind."""
    local_store.write_bytes("b/a.png", b"old")

    with pytest.raises(StorageError, match=r"cannot write 'b/a\.png'"):
        local_store.put_file(tmp_path / "no-such-render.png", "b/a.png")

    assert local_store.read_bytes("b/a.png") == b"old"
    assert os.listdir(tmp_path / "out" / "b") == ["a.png"]


def test_output_store_put_file_to_memory_creates_the_file(memory_store: OutputStore, tmp_path: Path) -> None:
    """`put_file` copies a local file into a non-local store."""
    source = tmp_path / "render.png"
    source.write_bytes(b"new")

    memory_store.put_file(source, "b/deep/a.png")

    assert memory_store.read_bytes("b/deep/a.png") == b"new"


@pytest.mark.parametrize("relpath", ["../x", "/etc/passwd", "a\\b", "a/../../x", "a/\x00b", "./a", "a//b", ""])
def test_output_store_rejects_unsafe_paths(local_store: OutputStore, relpath: str) -> None:
    """Absolute paths, `..`, backslashes, NUL and empty segments are rejected before any I/O."""
    with pytest.raises(UnsafePath):
        local_store.write_bytes(relpath, b"x")


def test_output_store_unsafe_path_is_not_retryable(memory_store: OutputStore) -> None:
    """A rejected path is a permanent error: retrying cannot make it safe."""
    with pytest.raises(UnsafePath) as caught:
        memory_store.read_bytes("../../etc/passwd")

    assert not is_retryable(caught.value)


def test_output_store_rejects_symlink_out_of_the_store(local_store: OutputStore, tmp_path: Path) -> None:
    """A symbolic link inside the store cannot be used to read outside it."""
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)

    with pytest.raises(UnsafePath, match="symbolic link"):
        local_store.read_bytes("link/secret.txt")


def test_check_relpath_allows_trailing_slash_for_prefixes() -> None:
    """A listing prefix may end with a slash, and may be empty for the whole store."""
    assert (check_relpath("batch/", allow_empty=True), check_relpath("", allow_empty=True)) == ("batch", "")


def test_output_store_missing_file_is_retryable_storage_error(memory_store: OutputStore) -> None:
    """Reading an absent file raises `StorageError`, which is retryable (remote stores may lag)."""
    with pytest.raises(StorageError, match=r"cannot read 'b/none\.png'") as caught:
        memory_store.read_bytes("b/none.png")

    assert is_retryable(caught.value)


def test_output_store_relpath_of_inverts_uri(memory_store: OutputStore) -> None:
    """`relpath_of` maps a URI from `uri` back to its relative path, and foreign URIs to None."""
    uri = memory_store.uri("b/a.png")

    assert (memory_store.relpath_of(uri), memory_store.relpath_of("memory:///elsewhere/a.png")) == ("b/a.png", None)


def test_output_store_local_relpath_of_accepts_file_urls(local_store: OutputStore) -> None:
    """A local store also recognises its files written as `file://` URLs."""
    assert local_store.relpath_of("file://" + local_store.uri("b/a.png")) == "b/a.png"


@pytest.mark.parametrize(
    ("location", "options"),
    [("memory://bucket", {"key": "AKIAEXAMPLE", "secret": SECRET}), (f"memory://user:{SECRET}@bucket", None)],
)
def test_output_store_repr_hides_credentials(location: str, options: dict[str, str] | None) -> None:
    """Neither storage options nor a password in the URL appear in `repr` or `location`."""
    store = OutputStore(location, storage_options=options)

    assert SECRET not in repr(store)
    assert SECRET not in store.location


def test_output_store_errors_hide_credentials() -> None:
    """A driver error quoting the credentials is redacted, and not chained as the cause."""
    store = OutputStore(f"{_LeakyFileSystem.protocol}://bucket", storage_options={"secret": SECRET})

    with pytest.raises(StorageError) as caught:
        store.read_bytes("b/a.png")

    assert "PermissionError" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_output_store_unknown_protocol_is_config_error() -> None:
    """A URL whose protocol fsspec does not know is a configuration error."""
    with pytest.raises(ConfigError, match="cannot open output store 'nosuchproto://bucket'"):
        OutputStore("nosuchproto://bucket", storage_options={"token": SECRET})


def test_output_store_move_is_a_claim(local_store: OutputStore) -> None:
    """The first move of a file wins; a second move of the same source reports it gone."""
    local_store.write_bytes("inbox/a.csv", b"prompt\nx\n")

    first = local_store.move("inbox/a.csv", "processing/a.csv")
    second = local_store.move("inbox/a.csv", "processing/a.csv")

    assert (first, second) == (True, False)
    assert local_store.read_bytes("processing/a.csv") == b"prompt\nx\n"


def test_output_store_move_on_memory_filesystem(memory_store: OutputStore) -> None:
    """Moving works on non-local filesystems too."""
    memory_store.write_bytes("a.csv", b"1")

    assert memory_store.move("a.csv", "done/a.csv")
    assert memory_store.list("") == ["done/a.csv"]
