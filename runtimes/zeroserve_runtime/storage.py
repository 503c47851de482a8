"""Fetching the model file: a local path, file://, http(s)://, s3:// or gs://, into a cache directory,
verified against an expected SHA-256."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from zeroserve_runtime.errors import ModelLoadError

log = logging.getLogger("zeroserve.runtime")
CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download_to(target: Path, write: callable) -> None:  # type: ignore[valid-type]
    """Write into a temporary file beside `target`, then rename: a half download is never used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _http(uri: str, target: Path) -> None:
    # Imported here: urllib.request pulls in http.client, email and ssl, CPU time that every cold start
    # from a local or pvc:// model would pay under the GIL for nothing.
    import urllib.request

    def write(f) -> None:  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(uri, timeout=60) as response:
            shutil.copyfileobj(response, f, CHUNK)

    _download_to(target, write)


def _s3(uri: str, target: Path) -> None:
    try:
        import boto3
    except ImportError:
        raise ModelLoadError("s3:// models need boto3: pip install 'zeroserve[s3]'") from None
    parsed = urlparse(uri)
    # Credentials come from the environment (the ModelService's secretRef) or the pod's identity.
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    _download_to(target, lambda f: client.download_fileobj(parsed.netloc, parsed.path.lstrip("/"), f))


def _gs(uri: str, target: Path) -> None:
    try:
        from google.cloud import storage
    except ImportError:
        raise ModelLoadError("gs:// models need google-cloud-storage: pip install 'zeroserve[gcs]'") from None
    parsed = urlparse(uri)
    blob = storage.Client().bucket(parsed.netloc).blob(parsed.path.lstrip("/"))
    _download_to(target, blob.download_to_file)


def redact(uri: str) -> str:
    """The URI without query or credentials: a presigned URL's signature must not reach the logs."""
    parsed = urlparse(uri)
    host = parsed.hostname or ""
    return parsed._replace(
        netloc=host + (f":{parsed.port}" if parsed.port else ""), query="", fragment=""
    ).geturl()


def fetch(uri: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """The model as a local file, downloaded once into `cache_dir` for remote URIs."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
    elif parsed.scheme in ("http", "https", "s3", "gs"):
        name = Path(parsed.path).name or "model.onnx"
        path = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
        if path.is_file() and (sha256 is None or _sha256(path) == sha256.lower()):
            log.info("model %s: using cached %s", redact(uri), path)
        else:
            fetcher = {"http": _http, "https": _http, "s3": _s3, "gs": _gs}[parsed.scheme]
            try:
                fetcher(uri, path)
            except ModelLoadError:
                raise
            except Exception as e:
                raise ModelLoadError(f"cannot fetch {redact(uri)}: {e}") from e
    else:
        raise ModelLoadError(f"unsupported model URI scheme '{parsed.scheme}' in {redact(uri)}")
    if sha256 is not None:
        actual = _sha256(path)
        if actual != sha256.lower():
            raise ModelLoadError(
                f"model {redact(uri)} has SHA-256 {actual}, but {sha256} was expected; refusing to serve it"
            )
    return path
