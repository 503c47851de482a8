"""Fetching the model file: a local path, file://, http(s)://, s3:// or gs://, into a cache directory,
verified against an expected SHA-256.

With a SHA-256 the cache is keyed by it, so the folder can be shared by every pod of a node or cluster
(a ModelService's `model.cache` claim): a model any of them fetched is found by the next cold start, from
whatever URI. Sharing is why nothing in the folder is trusted: each use re-hashes the file, and downloads are
written beside their final name and renamed into place, so no pod ever reads another's half download.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple
from urllib.parse import urlparse

from zeroserve_runtime.errors import ModelLoadError

log = logging.getLogger("zeroserve.runtime")
CHUNK = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Check = Callable[[Path], None]


def _download_to(target: Path, write: Callable[[BinaryIO], object], check: Check) -> None:
    """Write into a temporary file beside `target`, `check` it, then rename: a half download, or one
    that fails its check, never appears under the final name, where other pods of the node may look."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        check(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _http(uri: str, target: Path, check: Check) -> None:
    # Imported here: urllib.request pulls in http.client, email and ssl, CPU time that every cold start
    # from a local or pvc:// model would pay under the GIL for nothing.
    import urllib.request

    def write(f) -> None:  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(uri, timeout=60) as response:
            shutil.copyfileobj(response, f, CHUNK)

    _download_to(target, write, check)


def _s3(uri: str, target: Path, check: Check) -> None:
    try:
        import boto3
    except ImportError:
        raise ModelLoadError("s3:// models need boto3: pip install 'zeroserve[s3]'") from None
    parsed = urlparse(uri)
    # Credentials come from the environment (the ModelService's secretRef) or the pod's identity.
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    _download_to(target, lambda f: client.download_fileobj(parsed.netloc, parsed.path.lstrip("/"), f), check)


def _gs(uri: str, target: Path, check: Check) -> None:
    try:
        from google.cloud import storage
    except ImportError:
        raise ModelLoadError("gs:// models need google-cloud-storage: pip install 'zeroserve[gcs]'") from None
    parsed = urlparse(uri)
    blob = storage.Client().bucket(parsed.netloc).blob(parsed.path.lstrip("/"))
    _download_to(target, blob.download_to_file, check)


def redact(uri: str) -> str:
    """The URI without query or credentials: a presigned URL's signature must not reach the logs."""
    parsed = urlparse(uri)
    host = parsed.hostname or ""
    return parsed._replace(
        netloc=host + (f":{parsed.port}" if parsed.port else ""), query="", fragment=""
    ).geturl()


def _mismatch(uri: str, actual: str, expected: str) -> ModelLoadError:
    return ModelLoadError(
        f"model {redact(uri)} has SHA-256 {actual}, but {expected} was expected; refusing to serve it"
    )


class Fetched(NamedTuple):
    """The model file, and where it came from: "local" (a path or file://, no cache involved), "cache"
    (a verified copy already in the cache directory) or "download"."""

    path: Path
    source: Literal["local", "cache", "download"]


FETCHERS = {"http": _http, "https": _http, "s3": _s3, "gs": _gs}


def cache_entry(uri: str, cache_dir: Path, sha256: str | None) -> Path:
    """Where a remote model is kept. With a digest the key is the content, so the same bytes are found
    whatever URI (a mirror, a presigned URL with a fresh signature) or pod fetched them; without one only
    the URI can name it."""
    name = Path(urlparse(uri).path).name or "model.onnx"
    if sha256 is not None:
        return cache_dir / "sha256" / sha256.lower() / name
    return cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16] / name


def _verified_copy(entry: Path, sha256: str) -> Path | None:
    """A file in the digest's folder whose bytes have the digest, else None. Every candidate is hashed
    on every use: the folder may be shared with other pods (a ModelService's cache claim), so what it holds
    is trusted only as far as its digest. Another URI's name for the same bytes is as good as ours. A
    copy that fails is left alone, not deleted: another pod may be about to load a good one renamed over
    it, and ours is replaced by the download's rename anyway."""
    candidates = [entry, *sorted(p for p in entry.parent.glob("*") if p.name != entry.name)]
    for path in candidates:
        if path.name.startswith(".") or not path.is_file():
            continue  # the lock, and other pods' downloads still under way
        try:
            if _sha256(path) == sha256:
                return path
        except OSError:
            continue  # replaced or removed by another pod while being read
        log.warning("cached %s does not have SHA-256 %s; not using it", path, sha256)
    return None


def _cached(entry: Path, sha256: str | None) -> Path | None:
    if sha256 is not None:
        return _verified_copy(entry, sha256)
    # Without a digest there is nothing to check a copy against, so this must be the pod's own folder:
    # the API server takes a shared cache claim only for models with a digest.
    return entry if entry.is_file() else None


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One download per cache entry at a time across the pods of a node: a burst of cold starts fetches
    the model once, and the others wait, then find it. The kernel drops the lock of a pod that dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(uri: str, scheme: str, target: Path, sha256: str | None) -> None:
    def check(partial: Path) -> None:
        # Before the rename: bytes that are not the model never appear under its digest.
        if sha256 is not None and (actual := _sha256(partial)) != sha256:
            raise _mismatch(uri, actual, sha256)

    try:
        FETCHERS[scheme](uri, target, check)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot fetch {redact(uri)}: {e}") from e


def fetch(uri: str, cache_dir: Path, sha256: str | None = None) -> Fetched:
    """The model as a local file, downloaded once into `cache_dir` for remote URIs, and verified against
    `sha256` when given, whether it was downloaded, found in the cache or read from a local path."""
    digest = sha256.lower() if sha256 is not None else None
    # The digest names a folder: anything but hex could climb out of the cache.
    if digest is not None and not SHA256_HEX.fullmatch(digest):
        raise ModelLoadError(f"the expected SHA-256 must be 64 hex digits, not {sha256!r}")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        if digest is not None and (actual := _sha256(path)) != digest:
            raise _mismatch(uri, actual, digest)
        return Fetched(path, "local")
    if parsed.scheme not in FETCHERS:
        raise ModelLoadError(f"unsupported model URI scheme '{parsed.scheme}' in {redact(uri)}")
    entry = cache_entry(uri, cache_dir, digest)
    try:
        # Looked for without the lock: a file under its final name is always whole (downloads are renamed
        # into place), and pods that find the model should not queue behind one that is downloading.
        cached = _cached(entry, digest)
        if cached is None:
            with _exclusive(entry.parent):
                # Another pod may have downloaded it while this one waited for the lock.
                cached = _cached(entry, digest)
                if cached is None:
                    log.info("model %s: not in the cache, fetching it", redact(uri))
                    _download(uri, parsed.scheme, entry, digest)
                    return Fetched(entry, "download")
    except OSError as e:
        # Network failures are ModelLoadErrors by now; this is the cache folder itself, most often a
        # shared volume nobody made writable for the runtime's user.
        raise ModelLoadError(
            f"cannot use the model cache {cache_dir} as uid {os.getuid()}: {e.strerror or e} "
            f"({e.filename}); it must be a folder this user can write"
        ) from e
    log.info("model %s: cache hit, %s", redact(uri), cached)
    return Fetched(cached, "cache")
