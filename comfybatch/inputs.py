"""Input images of a batch: where each is, what it holds (checked before GPU time), and putting it on a server once.

An input goes to ComfyUI's input folder as `comfybatch/<sha16>.<ext>`: content-addressed, so a rerun, a second
batch or a retry on another server finds it there and uploads nothing.
"""

import asyncio
import hashlib
import os
import socket
import warnings
import weakref
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import fsspec  # type: ignore[import-untyped]
import httpx
from PIL import Image, UnidentifiedImageError

from comfybatch.addresses import internal, resolve
from comfybatch.comfy.client import ComfyClient
from comfybatch.errors import ConfigError
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from comfybatch.values import InvalidValue

SUBFOLDER = "comfybatch"  # in the server's input folder
# Pillow format -> extension, for what ComfyUI's LoadImage opens (PIL.Image.open + ImageSequence).
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
UPLOAD_PARAMETERS = ("image", "mask")  # detected on the first LoadImage / LoadImageMask
UPLOADS_FOLDER = ".uploads"  # in the output store: what PUT /api/uploads keeps
SHA_SUFFIX = "_sha256"  # `<parameter>_sha256`: the input's digest, recorded beside its location
_upload_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]]" = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class InputPolicy:
    """Limits on input images (`COMFYBATCH_MAX_INPUT_PIXELS`, …)."""

    max_pixels: int = 50_000_000
    max_bytes: int = 200_000_000
    allow_private_urls: bool = False  # loopback, private, link-local and other internal targets
    allow_http_urls: bool = False  # plain http (https only by default)
    fetch_timeout_s: float = 30.0
    # Set for requests that came over the API: local paths and fsspec URLs must lie under one of these, the uploads
    # folder first, then COMFYBATCH_INPUT_LOCAL_ROOT if the operator set one. None: any file the process can read.
    local_roots: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "InputPolicy":
        return cls(
            max_pixels=settings.max_input_pixels, max_bytes=settings.max_input_bytes,
            allow_private_urls=settings.input_allow_private_urls, allow_http_urls=settings.input_allow_http_urls,
        )  # fmt: skip

    @classmethod
    def for_api(cls, settings: Settings) -> "InputPolicy":
        """The policy of requests that came over the API: files only from the uploads folder or the input root."""
        uploads = OutputStore(settings.output_root).uri(UPLOADS_FOLDER)
        roots = (uploads, resolve_location(settings.input_local_root)) if settings.input_local_root else (uploads,)
        return replace(cls.from_settings(settings), local_roots=roots)

    def permits(self, location: str) -> bool:
        """Whether a path or fsspec URL (absolute, as `resolve_location` gives) may be read under this policy."""
        return self.local_roots is None or any(_under(location, root) for root in self.local_roots)

    def refusal(self, location: str) -> str:
        """Why `location` may not be read here, naming the input root (never the uploads folder) when there is one."""
        others = self.local_roots[1:] if self.local_roots else ()
        extra = f", or files under {', '.join(map(_display, others))}" if others else ""
        return f"{_display(location)}: only https URLs and uploaded files can be named here{extra}"


@dataclass(frozen=True)
class InputImage:
    """One input image as checked: its location, digest and format."""

    location: str
    sha256: str
    format: str
    width: int
    height: int

    @property
    def server_name(self) -> str:
        """The name in the server's input folder, as a `LoadImage` input names it."""
        return f"{SUBFOLDER}/{self.sha256[:16]}.{IMAGE_FORMATS[self.format]}"

    @property
    def stem(self) -> str:
        return location_stem(self.location)


def location_stem(location: str) -> str:
    """The file name without its extension, of a path or URL."""
    return PurePosixPath(urlsplit(location).path if "://" in location else location.replace("\\", "/")).stem


def resolve_location(value: str, base: str | None = None) -> str:
    """An absolute path or URL: a relative path is taken from `base` (the sheet's folder), else the working folder.

    Raises:
        InvalidValue: empty, or not a path or URL.
    """
    text = value.strip()
    if not text:
        raise InvalidValue("is empty: expected an image path or URL")
    if "://" in text:
        return text
    if os.path.isabs(text):
        return os.path.normpath(text)
    if base is not None and "://" in base:
        return base.rstrip("/") + "/" + text
    return os.path.normpath(os.path.join(os.path.abspath(base or "."), text))


def list_images(source: str | list[str], base: str | None = None) -> list[str]:
    """The image files of a folder or fsspec prefix in name order (hidden files and other suffixes skipped),
    or the locations of a list as given.

    Raises:
        InvalidValue: the folder does not exist or holds no image file.
    """
    if isinstance(source, list):
        return [resolve_location(item, base) for item in source]
    location = resolve_location(source, base)
    try:
        fs, path = fsspec.core.url_to_fs(location)
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidValue(f"{location!r}: no such folder") from None
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidValue(f"{location!r} cannot be listed: {exc}") from None
    files = sorted(
        str(entry["name"]) for entry in entries
        if entry.get("type") == "file" and not PurePosixPath(str(entry["name"])).name.startswith(".")
        and PurePosixPath(str(entry["name"])).suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip
    if not files:
        shown = ", ".join(sorted(IMAGE_SUFFIXES))
        raise InvalidValue(f"{location!r} holds no image files ({shown})")
    return [name if "://" not in location else fs.unstrip_protocol(name) for name in files]


def check_image(location: str, policy: InputPolicy) -> InputImage:
    """Read `location` and check that ComfyUI can load it, within the pixel limit.

    Raises:
        InvalidValue: missing, unreadable, not an image, a format ComfyUI cannot load, too many pixels.
    """
    data = read_input(location, policy)
    return inspect_image(location, data, policy)


def inspect_image(location: str, data: bytes, policy: InputPolicy) -> InputImage:
    """The digest and format of image bytes, decoded once to prove they load.

    Raises:
        InvalidValue: not an image, unsupported format, too many pixels, truncated or corrupt.
    """
    shown = _display(location)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
        try:
            with Image.open(BytesIO(data)) as image:
                if image.format not in IMAGE_FORMATS:
                    loadable = ", ".join(sorted(set(IMAGE_FORMATS) - {"MPO"}))
                    raise InvalidValue(f"{shown}: {image.format} images cannot be loaded by ComfyUI ({loadable})")
                width, height = image.size
                if width * height > policy.max_pixels:
                    raise InvalidValue(
                        f"{shown}: {width}x{height} is {width * height:,} pixels; at most {policy.max_pixels:,} "
                        "are allowed (COMFYBATCH_MAX_INPUT_PIXELS)"
                    )
                image.load()
                found = str(image.format)
        except UnidentifiedImageError:
            raise InvalidValue(f"{shown}: not an image (or a format ComfyUI cannot load)") from None
        except Image.DecompressionBombError:  # over twice Pillow's limit: refused before its size is known
            raise InvalidValue(
                f"{shown}: declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels (a decompression bomb?); "
                f"at most {policy.max_pixels:,} pixels are allowed"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:  # Pillow: truncated or corrupt data
            raise InvalidValue(f"{shown}: the image is truncated or corrupt ({exc})") from None
    return InputImage(location, hashlib.sha256(data).hexdigest(), found, width, height)


def read_input(location: str, policy: InputPolicy) -> bytes:
    """The bytes at `location`: a path, an fsspec URL, or a public http(s) URL.

    Raises:
        InvalidValue: missing, unreadable, too large, or a URL that is refused or does not answer.
    """
    shown = _display(location)
    if location.startswith(("http://", "https://")):
        return _fetch(location, policy)
    if not policy.permits(location):
        raise InvalidValue(policy.refusal(location))
    try:
        with fsspec.open(location, "rb") as file:
            data: bytes = file.read(policy.max_bytes + 1)
    except FileNotFoundError:
        raise InvalidValue(f"{shown}: file not found") from None
    except IsADirectoryError:
        raise InvalidValue(f"{shown}: is a folder, not an image file") from None
    except PermissionError:
        raise InvalidValue(f"{shown}: cannot be read (permission denied)") from None
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidValue(f"{shown}: cannot be read: {exc}") from None
    if len(data) > policy.max_bytes:
        raise InvalidValue(f"{shown}: larger than {policy.max_bytes:,} bytes")
    return data


def check_url(url: str, policy: InputPolicy) -> str:
    """The address to fetch `url` from, after refusing what the process must not fetch: not https (unless
    allowed), or a host that resolves to a loopback, private, link-local or other internal address (unless allowed).

    Raises:
        InvalidValue: naming the URL and why.
    """
    parts = urlsplit(url)
    shown = _display(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and policy.allow_http_urls):
        raise InvalidValue(f"{shown}: only https URLs are fetched (COMFYBATCH_INPUT_ALLOW_HTTP_URLS)")
    if not parts.hostname:
        raise InvalidValue(f"{shown}: the URL names no host")
    try:
        addresses = resolve(parts.hostname, parts.port or 443)
    except (socket.gaierror, UnicodeError):
        raise InvalidValue(f"{shown}: the host {parts.hostname!r} does not resolve") from None
    if (address := internal(addresses)) is not None and not policy.allow_private_urls:
        raise InvalidValue(
            f"{shown}: {parts.hostname} is an internal address ({address}); only public hosts are fetched "
            "(COMFYBATCH_INPUT_ALLOW_PRIVATE_URLS)"
        )
    return str(addresses[0])


def _fetch(url: str, policy: InputPolicy) -> bytes:
    address = check_url(url, policy)
    shown = _display(url)
    # Connect to the address just checked (a second DNS answer could point inside: rebinding), with the URL's
    # host in the Host header and for TLS (SNI and certificate). No redirects: each hop would need the check.
    target = httpx.URL(url)
    host = target.host
    pinned = target.copy_with(host=address)
    try:
        with (
            httpx.Client(timeout=policy.fetch_timeout_s, follow_redirects=False) as http,
            http.stream(
                "GET", pinned, headers={"Host": target.netloc.decode()}, extensions={"sni_hostname": host}
            ) as response,  # fmt: skip
        ):
            if response.status_code != 200:
                raise InvalidValue(f"{shown}: answered HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_bytes(1 << 16):
                data += chunk
                if len(data) > policy.max_bytes:
                    raise InvalidValue(f"{shown}: larger than {policy.max_bytes:,} bytes")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise InvalidValue(f"{shown}: does not answer ({type(exc).__name__})") from None


async def ensure_uploaded(comfy: ComfyClient, location: str, sha256: str, policy: InputPolicy) -> bool:
    """Put the input on `comfy`'s server unless it is there already; True when it was uploaded.

    One job per server and input looks and uploads at a time, so concurrent jobs upload it once.

    Raises:
        ConfigError: the input changed or vanished since the batch was checked;
        ServerUnavailable, ServerProtocolError from the client.
    """
    loop = asyncio.get_running_loop()
    locks = _upload_locks.setdefault(loop, {})
    lock = locks.setdefault((comfy.base_url, sha256), asyncio.Lock())
    async with lock:
        try:
            data = await asyncio.to_thread(read_input, location, policy)
            image = await asyncio.to_thread(inspect_image, location, data, policy)
        except InvalidValue as exc:
            raise ConfigError(f"input image {exc}") from None
        if image.sha256 != sha256:
            raise ConfigError(f"input image {_display(location)} changed after the batch was checked; run it again")
        subfolder, _, filename = image.server_name.partition("/")
        if await comfy.has_input(filename, subfolder=subfolder):
            return False
        uploaded = await comfy.upload_image(data, filename=filename, subfolder=subfolder, overwrite=True)
        if uploaded.ref != image.server_name:
            raise ConfigError(f"[{comfy.name}] stored the input as {uploaded.ref!r}, not {image.server_name!r}")
        return True


def upload_values(values: dict[str, Any]) -> list[tuple[str, str]]:
    """`(location, sha256)` of each input image a job's values name (`<name>` beside `<name>_sha256`)."""
    return [
        (str(values[name.removesuffix(SHA_SUFFIX)]), str(digest))
        for name, digest in values.items()
        if name.endswith(SHA_SUFFIX) and name.removesuffix(SHA_SUFFIX) in values
    ]


def _under(location: str, root: str) -> bool:
    if "://" in root or "://" in location:
        return location.startswith(root.rstrip("/") + "/") and "/../" not in location
    if not os.path.isabs(location):
        return False  # relative to which folder? The dashboard's and the worker's differ
    # Real paths: a symbolic link under the root must not lead out of it.
    real, real_root = os.path.realpath(location), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) == real_root


def _display(location: str) -> str:
    """The location without credentials or query string, fit for messages and logs."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
