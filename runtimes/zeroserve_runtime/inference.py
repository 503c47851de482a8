"""One inference request against one loaded model: which model a request may address, which outputs it
gets and in what form. The server's data plane and the functions (Lambda, Cloud Functions) share this,
so the same request gets the same answer and the same error on every surface. Only how the model runs
differs: the server queues it through its batcher, a function calls the session directly.

Kept free of the server's web, metrics and batching imports: a function's cold start pays for every
module it imports.
"""

from __future__ import annotations

import functools
from typing import NoReturn

import numpy as np

from zeroserve_runtime.errors import InvalidInput, ModelNotFound, RepositoryReadOnly
from zeroserve_runtime.model import OnnxModel
from zeroserve_runtime.protocol.repository import ModelIndex, ModelState
from zeroserve_runtime.protocol.tensors import InferRequest, InferResponse

# Every surface serves exactly one model, at one version.
MODEL_VERSION = "1"
SERVER_NAME = "zeroserve"
# What every surface supports; the server adds what only it has (/metrics).
EXTENSIONS = ("binary_tensor_data", "model_repository/readonly")


@functools.cache
def server_version() -> str:
    """The installed zeroserve distribution's version (pyproject takes it from zeroserve/__init__.py),
    read from its metadata: the runtime and the functions ship without the CLI package's dependencies and
    must not import it. Looked up on first use, not in every cold start."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zeroserve")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def server_metadata(*extra_extensions: str) -> dict[str, object]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": [*EXTENSIONS, *extra_extensions]}


def check_served(served: str, name: str, version: str | None) -> None:
    """Refuse a request for any other model or version than the one served."""
    if name != served or version not in (None, "", MODEL_VERSION):
        shown = name if not version else f"{name} version {version}"
        raise ModelNotFound(f"model '{shown}' is not served here; this server serves '{served}'")


def repository_index(
    served: str, repository: str | None, state: ModelState, ready_only: bool, reason: str = ""
) -> list[ModelIndex]:
    """The read-only repository's index: the one model served, in `state`."""
    if repository:
        raise ModelNotFound(f"no model repository named '{repository}'; this server has one, unnamed")
    if ready_only and state != "READY":
        return []
    return [ModelIndex(served, MODEL_VERSION, state, reason)]


def refuse_repository_change(served: str, name: str, action: str) -> NoReturn:
    raise RepositoryReadOnly(
        f"cannot {action} model '{name}': the model repository is read-only; this server serves "
        f"'{served}', fixed when it started (deploy another server to serve another model)"
    )


def wanted_outputs(model: OnnxModel, name: str, request: InferRequest) -> list[str]:
    """Check the request against the model and name the outputs it gets, before anything runs."""
    model.check(request.inputs, request.datatypes)
    wanted = [o.name for o in request.outputs] if request.outputs else model.output_names
    unknown = [n for n in wanted if n not in model.output_names]
    if unknown:
        raise InvalidInput(
            f"unknown output {', '.join(repr(u) for u in unknown)}; model '{name}' has "
            f"{', '.join(repr(n) for n in model.output_names)}"
        )
    return wanted


def build_response(
    model: OnnxModel, name: str, request: InferRequest, wanted: list[str], results: list[np.ndarray]
) -> InferResponse:
    """The response from one run's results (all the model's outputs, in its order)."""
    by_name = dict(zip(model.output_names, results, strict=True))
    binary = {o.name: o.binary or request.binary_outputs for o in request.outputs or []}
    if not request.outputs:
        binary = dict.fromkeys(wanted, request.binary_outputs)
    return InferResponse(
        model_name=name,
        model_version=MODEL_VERSION,
        outputs={n: by_name[n] for n in wanted},
        id=request.id,
        binary=binary,
    )


def infer(model: OnnxModel, name: str, request: InferRequest) -> InferResponse:
    """Check, run in the calling thread, answer: the whole request for callers without a batcher."""
    wanted = wanted_outputs(model, name, request)
    return build_response(model, name, request, wanted, model.run(request.inputs))
