"""The runtime's model cache keyed by SHA-256, as a ModelService's cache claim shares it between pods: real
files, a real loopback HTTP server that counts what it serves, and real processes racing for one folder."""

from __future__ import annotations

import hashlib
import http.server
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtimeproc import RuntimeProcess
from zeroserve_runtime.errors import ModelLoadError
from zeroserve_runtime.storage import fetch


class ModelSource:
    """Serves the files of `folder` over loopback HTTP, counting GETs per path; `delay` seconds before each
    answer keeps concurrent fetches overlapping."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.requests: list[str] = []
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.requests.append(self.path)
                time.sleep(delay)
                file = folder / self.path.lstrip("/").split("?")[0]
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(models: dict[str, Path], tmp_path: Path) -> Iterator[tuple[ModelSource, str]]:
    """The linear model under two names, as a bucket and its mirror would hold it, and its SHA-256."""
    folder = tmp_path / "served"
    (folder / "mirror").mkdir(parents=True)
    data = models["linear"].read_bytes()
    (folder / "linear.onnx").write_bytes(data)
    (folder / "mirror" / "linear-v1.onnx").write_bytes(data)
    source = ModelSource(folder)
    yield source, hashlib.sha256(data).hexdigest()
    source.close()


def model_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_same_digest_from_another_uri_is_a_hit_without_a_request(
    served: tuple[ModelSource, str], models: dict[str, Path], tmp_path: Path
) -> None:
    source, digest = served
    cache = tmp_path / "cache"
    first = fetch(f"{source.url}/linear.onnx", cache, digest)
    assert first.source == "download" and source.requests == ["/linear.onnx"]
    assert first.path.read_bytes() == models["linear"].read_bytes()

    # Another URI, another file name, a digest in capitals: the same bytes, so the same entry.
    second = fetch(f"{source.url}/mirror/linear-v1.onnx?X-Amz-Signature=abc", cache, digest.upper())
    assert second.source == "cache" and second.path == first.path
    assert source.requests == ["/linear.onnx"], "the cache hit still went to the server"
    assert model_files(cache) == [first.path]
    assert digest in first.path.parts


def test_a_corrupted_cached_file_is_fetched_again(
    served: tuple[ModelSource, str], models: dict[str, Path], tmp_path: Path
) -> None:
    source, digest = served
    cache = tmp_path / "cache"
    uri = f"{source.url}/linear.onnx"
    path = fetch(uri, cache, digest).path
    # What a compromised or crashed neighbour could leave: same name, same size, other bytes.
    good = path.read_bytes()
    path.write_bytes(bytes(b ^ 0xFF for b in good))
    # And a planted file under another name in the digest's folder, which must not be taken either.
    (path.parent / "planted.onnx").write_bytes(b"not a model")

    again = fetch(uri, cache, digest)
    assert again.source == "download" and len(source.requests) == 2
    assert again.path.read_bytes() == good == models["linear"].read_bytes()
    assert fetch(f"{source.url}/mirror/linear-v1.onnx", cache, digest).source == "cache"
    assert len(source.requests) == 2


def test_a_download_with_the_wrong_digest_leaves_nothing_under_it(
    served: tuple[ModelSource, str], tmp_path: Path
) -> None:
    source, _ = served
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ModelLoadError, match="refusing to serve it"):
        fetch(f"{source.url}/linear.onnx", cache, wrong)
    assert model_files(cache) == [], "bytes that failed their digest were kept"
    assert not [p for p in cache.rglob(".partial-*")]


def test_without_a_digest_the_cache_is_keyed_by_uri(served: tuple[ModelSource, str], tmp_path: Path) -> None:
    source, _ = served
    cache = tmp_path / "cache"
    uri = f"{source.url}/linear.onnx"
    assert fetch(uri, cache).source == "download"
    assert fetch(uri, cache).source == "cache"
    # Nothing vouches that another URI holds the same bytes.
    assert fetch(f"{source.url}/mirror/linear-v1.onnx", cache).source == "download"
    assert len(source.requests) == 2
    assert not (cache / "sha256").exists()


def test_a_digest_that_is_not_hex_never_names_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="64 hex digits"):
        fetch("http://127.0.0.1:9/linear.onnx", tmp_path / "cache", "../" * 21 + "a")
    assert not (tmp_path / "cache").exists()


def _fetch_in_a_process(uri: str, cache: str, digest: str, start: float) -> tuple[str, str]:
    time.sleep(max(0.0, start - time.time()))
    found = fetch(uri, Path(cache), digest)
    return str(found.path), hashlib.sha256(found.path.read_bytes()).hexdigest()


def test_concurrent_cold_starts_share_one_download_and_one_file(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Pods of a node starting together: processes (each its own open of the lock), released at one
    instant against a slow source, so they overlap."""
    folder = tmp_path / "served"
    folder.mkdir()
    data = models["linear"].read_bytes()
    (folder / "linear.onnx").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    source = ModelSource(folder, delay=0.5)
    cache = tmp_path / "cache"
    try:
        start = time.time() + 1.0
        with multiprocessing.get_context("spawn").Pool(6) as pool:
            args = [(f"{source.url}/linear.onnx", str(cache), digest, start)] * 6
            results = pool.starmap(_fetch_in_a_process, args)
    finally:
        source.close()
    assert {r[1] for r in results} == {digest}
    (path,) = {r[0] for r in results}
    assert model_files(cache) == [Path(path)]
    assert not list(cache.rglob(".partial-*")), "a download was left half written"
    assert source.requests == ["/linear.onnx"], "pods that waited for the lock downloaded again"


def _counter(text: str, name: str) -> float:
    match = re.search(rf'^{name}\{{model="linear"\}} (\S+)$', text, re.M)
    assert match, f"{name} not exported:\n{text}"
    return float(match[1])


def test_the_runtime_reports_a_hit_on_its_second_cold_start(
    served: tuple[ModelSource, str], tmp_path: Path
) -> None:
    """Two runtime processes one after the other on one cache folder, as two pods on a cache claim:
    the second one's model never crosses the network, and its metrics say so."""
    source, digest = served
    # RuntimeProcess keeps its cache beside its log: one folder, so one cache.
    first = RuntimeProcess(
        f"{source.url}/linear.onnx", tmp_path / "first.log", name="linear", model_sha256=digest
    )
    with first:
        text = first.metrics()
        assert _counter(text, "zeroserve_model_cache_misses_total") == 1
        assert _counter(text, "zeroserve_model_cache_hits_total") == 0
    uri = f"{source.url}/mirror/linear-v1.onnx"
    with RuntimeProcess(uri, tmp_path / "second.log", name="linear", model_sha256=digest) as second:
        text = second.metrics()
        assert _counter(text, "zeroserve_model_cache_hits_total") == 1
        assert _counter(text, "zeroserve_model_cache_misses_total") == 0
    assert source.requests == ["/linear.onnx"]
    assert "(cache hit)" in second.log(), second.log()


def _fetch_as_uid_1000(uri: str, cache: str, digest: str, said: multiprocessing.SimpleQueue) -> None:
    # Forked, not exec'd: the interpreter may live where uid 1000 cannot read (under /root).
    os.setgid(1000)
    os.setuid(1000)
    try:
        fetch(uri, Path(cache), digest)
        said.put("fetched")
    except ModelLoadError as e:
        said.put(f"ModelLoadError: {e}")
    except BaseException as e:
        said.put(f"{type(e).__name__}: {e}")


def test_a_cache_the_runtimes_user_cannot_write_is_named_in_the_error(
    served: tuple[ModelSource, str], tmp_path: Path
) -> None:
    """A shared volume left owned by root, as a hostPath PersistentVolume is unless prepared: the runtime's
    user (1000, as in its pods) gets an error naming the folder and the user, which becomes the
    ModelService's RuntimeFailed message, not a traceback."""
    assert os.geteuid() == 0, "this test runs a process as uid 1000 and so needs root"
    source, digest = served
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    context = multiprocessing.get_context("fork")
    said = context.SimpleQueue()
    child = context.Process(
        target=_fetch_as_uid_1000, args=(f"{source.url}/linear.onnx", str(cache), digest, said)
    )
    child.start()
    child.join(60)
    message = said.get()
    assert message.startswith(
        f"ModelLoadError: cannot use the model cache {cache} as uid 1000: Permission denied"
    ), message
    assert source.requests == [], "it downloaded with nowhere to keep the file"
