"""Moto's standalone S3 server on loopback, and the process settings that point s3fs at it (as in production)."""

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "comfybatch-test", "AWS_SECRET_ACCESS_KEY": "comfybatch-test-secret"}


@contextmanager
def moto_s3() -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 (any free port); yield its endpoint URL."""
    pytest.importorskip("s3fs", reason="s3fs is in the test extra: scripts/bootstrap.sh installs it")
    server_module = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> str:
    """Point s3fs (through botocore's standard variables) at `endpoint`; return a new, empty bucket's name."""
    import s3fs  # type: ignore[import-untyped]

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name, value in MOTO_KEYS.items():
        monkeypatch.setenv(name, value)
    # fsspec caches filesystems by their arguments, not by the environment they were created in.
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"comfybatch-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return bucket
