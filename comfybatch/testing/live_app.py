"""Serve an ASGI app with uvicorn on a free loopback port in a background thread (WebSockets, browsers)."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from comfybatch.local.fleet import ServerStartError, free_port


@contextmanager
def serve_in_thread(app: ASGIApp, *, timeout_s: float = 20.0) -> Iterator[str]:
    """Run `app` (lifespan included) until the block ends; yields its base URL.

    Example:
        with serve_in_thread(create_app(settings)) as url:
            httpx.get(f"{url}/health")
    """
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServerStartError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
