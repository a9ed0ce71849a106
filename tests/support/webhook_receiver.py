"""A real webhook receiver on loopback for tests: checks each Standard Webhooks signature with the standard library
alone (not comfybatch's signer), and answers as the test asks."""

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "whsec_" + base64.b64encode(b"comfybatch-webhook-test-secret-32b").decode()


@dataclass
class Delivery:
    path: str
    webhook_id: str
    timestamp: str
    signature_ok: bool
    status: int
    body: dict[str, Any]


@dataclass
class Receiver:
    """Answers each webhook-id `failure_status` for its first `failures` attempts, then 200; with `hang`, holds
    every request until `release` is set."""

    failures: int = 2
    failure_status: int = 500
    hang: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    holding: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> int:
        webhook_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest())
        offered = [
            s.partition(",")[2].encode() for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")
        ]
        signature_ok = any(hmac.compare_digest(expected, sig) for sig in offered)
        with self.lock:
            earlier = sum(1 for d in self.deliveries if d.webhook_id == webhook_id)
            status = self.failure_status if earlier < self.failures else 200
            self.deliveries.append(Delivery(path, webhook_id, timestamp, signature_ok, status, json.loads(raw)))
            self.holding += self.hang
        if self.hang:
            self.release.wait(120)
            with self.lock:
                self.holding -= 1
        return status

    def delivered(self, path: str | None = None) -> dict[str, list[Delivery]]:
        """Type -> the 2xx deliveries of that type (to `path` only, when given)."""
        by_type: dict[str, list[Delivery]] = {}
        with self.lock:
            deliveries = list(self.deliveries)
        for delivery in deliveries:
            if delivery.status == 200 and (path is None or delivery.path == path):
                by_type.setdefault(delivery.body["type"], []).append(delivery)
        return by_type


@contextmanager
def running_receiver(state: Receiver | None = None) -> Iterator[tuple[Receiver, str]]:
    """The receiver on 127.0.0.1 (an ephemeral port) and its base URL, until the block exits."""
    receiver = state or Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = receiver.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
