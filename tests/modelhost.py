"""Model files served over HTTP on the test node's bridge address, the way a user's model server or bucket
would serve them to pods: the pod fetches the model by URL and checks its sha256."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node import NODE_IP

SHARED_MODELS = Path(__file__).resolve().parent.parent.parent / "shared" / "models"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def serve_models(directory: Path, host: str = NODE_IP) -> Iterator[str]:
    """Serve `directory` read-only at http://host:port/ for as long as the block runs; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
