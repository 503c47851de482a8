"""`zeroserve fetch`: the model into a Triton model repository, for NVIDIA's unmodified Triton image.

It runs as the init container of a Triton ModelService, from the runtime image. The model comes from the
same sources, through the same cache, with the same SHA-256 check and the same errors as `zeroserve
serve`; it lands at `<repository>/<name>/1/model.onnx`, beside the config.pbtxt the operator built.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import Field

from zeroserve_runtime.errors import ModelLoadError
from zeroserve_runtime.settings import ModelSourceSettings, cli_settings
from zeroserve_runtime.storage import fetch, redact

VERSION = "1"
MODEL_FILE = "model.onnx"
# Triton names a model by its folder: one path component, nothing that climbs out of the repository.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class FetchSettings(ModelSourceSettings):
    model_config = cli_settings("zeroserve fetch")

    model_repository: Path = Field(
        description="Triton model repository to write: <repository>/<model-name>/1/model.onnx."
    )
    triton_config: str | None = Field(
        default=None,
        description="Text of the model's config.pbtxt; without it Triton's auto-complete derives one.",
    )


def _write_atomically(target: Path, write) -> None:  # type: ignore[no-untyped-def]
    # A repository Triton starts on must never hold half a file under the final name.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fill_repository(settings: FetchSettings) -> Path:
    """Fetch and verify the model, then write it and its config into the repository; the model's folder."""
    if not re.fullmatch(MODEL_NAME, settings.model_name):
        raise ModelLoadError(
            f"model name {settings.model_name!r} cannot name a folder of a Triton repository"
        )
    found = fetch(settings.model_uri, settings.cache_dir, settings.model_sha256)
    folder = settings.model_repository / settings.model_name
    try:
        # Copied, not linked: the cache may be shared with other pods, and what was verified is what
        # Triton must load.
        with found.path.open("rb") as source:
            _write_atomically(folder / VERSION / MODEL_FILE, lambda f: shutil.copyfileobj(source, f, 1 << 20))
        if settings.triton_config is not None:
            _write_atomically(folder / "config.pbtxt", lambda f: f.write(settings.triton_config.encode()))
    except OSError as e:
        raise ModelLoadError(
            f"cannot write the model repository {settings.model_repository}: {e.strerror or e} ({e.filename})"
        ) from e
    how = {"download": "downloaded", "cache": "from the cache", "local": "local file"}[found.source]
    print(f"zeroserve fetch: {redact(settings.model_uri)} ({how}) -> {folder}", file=sys.stderr)
    return folder
