"""Model files served over HTTP on the test node's bridge address, the way a user's model server or bucket
would serve them to pods: the pod fetches the model by URL and checks its sha256."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node import NODE_IP

SHARED_MODELS = Path(__file__).resolve().parent.parent.parent / "shared" / "models"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    # Bytes per second each download is held to, as a remote bucket would; None: as fast as the bridge.
    bytes_per_second: float | None = None

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        if not self.bytes_per_second:
            super().copyfile(source, outputfile)
            return
        start, sent = time.monotonic(), 0
        while chunk := source.read(1 << 16):
            outputfile.write(chunk)
            sent += len(chunk)
            if (ahead := sent / self.bytes_per_second - (time.monotonic() - start)) > 0:
                time.sleep(ahead)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def serve_models(
    directory: Path, host: str = NODE_IP, bytes_per_second: float | None = None
) -> Iterator[str]:
    """Serve `directory` read-only at http://host:port/ for as long as the block runs; yields the base URL.
    `bytes_per_second` holds each download to that rate, as a bucket across a network would serve it."""
    throttled = type("Throttled", (_QuietHandler,), {"bytes_per_second": bytes_per_second})
    handler = functools.partial(throttled, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
