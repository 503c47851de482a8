"""The images hack/build-images.sh builds (`make images`) hold what they should and nothing else: the
runtime image only the runtime's extra, the operator image only the operator's, both non-root, without
pip or its cache, compiled for a read-only root filesystem. Read from their docker-archives, as a node
imports them. They are never built here: a missing archive fails, naming the command that builds it."""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

CACHE = Path(
    os.environ.get("ZEROSERVE_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zeroserve"
)
IMAGES = CACHE / "images"
SITE_PACKAGES = "opt/zeroserve/lib/python3.11/site-packages"
ENTRYPOINT = ["/opt/zeroserve/bin/zeroserve"]

# Everything `pip install '.[runtime,s3,gcs]'` may bring, by normalized distribution name. A new entry
# is a decision: each one is in every cold start's image pull.
RUNTIME_ALLOWED = {
    "zeroserve",
    # runtime
    "onnxruntime",
    "numpy",
    "orjson",
    "pysimdjson",  # JSON tensors straight into typed buffers, 3.5x faster on 1 MB bodies (#17)
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
    "python-dotenv",
    "prometheus-client",
    "uvicorn",
    "click",
    "h11",
    "httptools",
    "grpcio",
    "tritonclient",
    "protobuf",
    "packaging",
    "python-rapidjson",
    "urllib3",
    "ml-dtypes",
    "coloredlogs",
    "humanfriendly",
    "flatbuffers",
    "sympy",
    "mpmath",
    # s3
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "six",
    # gcs
    "google-cloud-storage",
    "google-cloud-core",
    "google-api-core",
    "google-auth",
    "google-crc32c",
    "google-resumable-media",
    "googleapis-common-protos",
    "proto-plus",
    "requests",
    "certifi",
    "charset-normalizer",
    "idna",
    "cachetools",
    "pyasn1",
    "pyasn1-modules",
    "rsa",
    "cryptography",
    "cffi",
    "pycparser",
    "opentelemetry-api",
    "importlib-metadata",
    "zipp",
}
# What the other components bring, named so that a failure says which leaked in.
NOT_IN_RUNTIME = {
    "kopf",
    "kubernetes",
    "kubernetes-asyncio",
    "pyhelm3",
    "locust",
    "gevent",
    "geventhttpclient",
    "flask",
    "matplotlib",
    "rich",
    "pyyaml",
    "aiohttp",
    "pip",
    "setuptools",
}
OPERATOR_REQUIRED = {"zeroserve", "kopf", "kubernetes-asyncio", "pydantic", "prometheus-client"}
NOT_IN_OPERATOR = {
    # The synchronous client: kopf imports it when it is there, 45 MB of the operator's memory.
    "kubernetes",
    "onnxruntime",
    "tritonclient",
    "grpcio",
    "uvicorn",
    "locust",
    "gevent",
    "matplotlib",
    "pyhelm3",
    "boto3",
    "pip",
    "setuptools",
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Image:
    tags: list[str]
    config: dict[str, Any]
    files: frozenset[str]

    @property
    def distributions(self) -> set[str]:
        """Normalized names of what is installed in the virtualenv, from its *.dist-info folders."""
        names = set()
        for path in self.files:
            parent = PurePosixPath(path).parent
            if str(parent.parent) == SITE_PACKAGES and parent.name.endswith(".dist-info"):
                names.add(_normalize(parent.name.removesuffix(".dist-info").rsplit("-", 1)[0]))
        return names


def _apply_layer(files: set[str], layer: tarfile.TarFile) -> None:
    """The layer's changes on FILES, whiteouts included (the OCI layer rules)."""
    for member in layer:
        path = PurePosixPath(member.name.removeprefix("./"))
        if path.name == ".wh..wh..opq":
            prefix = f"{path.parent}/"
            files.difference_update({f for f in files if f.startswith(prefix)})
        elif path.name.startswith(".wh."):
            gone = str(path.parent / path.name.removeprefix(".wh."))
            files.difference_update({f for f in files if f == gone or f.startswith(gone + "/")})
        elif not member.isdir():
            files.add(str(path))


@cache
def image(name: str) -> Image:
    archive = IMAGES / f"{name}.tar"
    if not archive.is_file():
        pytest.fail(
            f"{archive} is missing: build the images with `make images` (hack/build-images.sh), "
            "which needs buildah and mmdebstrap (apt-get install buildah mmdebstrap runc)",
            pytrace=False,
        )
    with tarfile.open(archive) as outer:
        (manifest,) = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        files: set[str] = set()
        for layer_name in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer_name)) as layer:
                _apply_layer(files, layer)
    return Image(tags=manifest["RepoTags"], config=config["config"], files=frozenset(files))


def _images_env() -> dict[str, str]:
    path = IMAGES / "images.env"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make images` (hack/build-images.sh)", pytrace=False)
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_images_env_names_each_archive() -> None:
    env = _images_env()
    assert env["ZEROSERVE_IMAGES_DIR"] == str(IMAGES)
    assert env["ZEROSERVE_BASE_IMAGE"].startswith("kind.local/zeroserve/base:")
    for key, name in (
        ("ZEROSERVE_PAUSE_IMAGE", "pause"),
        ("ZEROSERVE_RUNTIME_IMAGE", "runtime-onnx"),
        ("ZEROSERVE_OPERATOR_IMAGE", "operator"),
    ):
        # kind.local: Knative resolves no tag under it, so a node-local image is used as it is.
        assert env[key].startswith(f"kind.local/zeroserve/{name}:")
        assert image(name).tags == [env[key]]


def test_pause_image_is_one_static_binary_run_as_nobody() -> None:
    pause = image("pause")
    assert pause.files == {"pause"}
    assert pause.config["User"] == "65535:65535"
    assert pause.config["Entrypoint"] == ["/pause"]


def test_runtime_image_holds_the_runtime_only() -> None:
    runtime = image("runtime-onnx")
    installed = runtime.distributions
    assert {"zeroserve", "onnxruntime", "uvicorn", "grpcio", "tritonclient", "boto3"} <= installed
    assert not installed & NOT_IN_RUNTIME, f"other components' dependencies: {installed & NOT_IN_RUNTIME}"
    assert installed <= RUNTIME_ALLOWED, f"not on the allow-list: {sorted(installed - RUNTIME_ALLOWED)}"
    # Only the runtime's code, not the operator's or the load generator's.
    packages = {PurePosixPath(f).parts[5] for f in runtime.files if f.startswith(SITE_PACKAGES + "/")}
    assert "zeroserve_runtime" in packages
    assert not packages & {"zeroserve_operator", "zeroserve_loadgen"}


def test_operator_image_holds_the_operator_only() -> None:
    installed = image("operator").distributions
    assert installed >= OPERATOR_REQUIRED, f"missing: {OPERATOR_REQUIRED - installed}"
    assert not installed & NOT_IN_OPERATOR, f"not the operator's: {installed & NOT_IN_OPERATOR}"


@pytest.mark.parametrize(
    ("name", "cmd"), [("runtime-onnx", ["serve"]), ("operator", ["operator", "--all-namespaces"])]
)
def test_image_runs_non_root_read_only_without_pip(name: str, cmd: list[str]) -> None:
    img = image(name)
    # The operator's securityContext and the chart's: runAsNonRoot, uid 1000.
    assert img.config["User"] == "1000:1000"
    assert img.config["Entrypoint"] == ENTRYPOINT
    assert img.config["Cmd"] == cmd
    env = dict(e.split("=", 1) for e in img.config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not [f for f in img.files if "/.cache/pip/" in f or f.startswith(("wheels/", "src/"))]
    assert "opt/zeroserve/bin/pip" not in img.files
    # Compiled at build: a read-only root filesystem cannot take the bytecode at run time.
    package = "zeroserve_runtime" if name == "runtime-onnx" else "zeroserve_operator"
    compiled = [f for f in img.files if f.startswith(f"{SITE_PACKAGES}/{package}/__pycache__/")]
    assert compiled, f"no bytecode for {package}"
