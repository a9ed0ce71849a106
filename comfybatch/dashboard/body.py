"""A request body read no further than a size limit, for the guard's JSON bodies and for uploads alike."""

from collections.abc import AsyncIterable, Mapping

from comfybatch.errors import RequestTooLarge


async def read_limited(chunks: AsyncIterable[bytes], headers: Mapping[str, str], *, limit: int, what: str) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes, whatever Content-Length claims.

    A Content-Length over the limit is refused before anything is read.

    Raises:
        RequestTooLarge (413) saying "`what` may have at most `limit` bytes".
    """
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"{what} may have at most {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"{what} may have at most {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
