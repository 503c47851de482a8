"""An ONNX model in an onnxruntime session, with the metadata the protocol reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from zeroserve_runtime.errors import InvalidInput, ModelLoadError
from zeroserve_runtime.protocol.tensors import DATATYPES, ONNX_TO_DATATYPE
from zeroserve_runtime.storage import Fetched, fetch

if TYPE_CHECKING:
    from zeroserve_runtime.settings import RuntimeSettings

log = logging.getLogger("zeroserve.runtime")

# Runs on inputs this large give the activation memory they grew onnxruntime's arena by back when they
# end: the arena otherwise keeps its largest size for good (0.9 GB after one batch of 100 images on
# EfficientNet-Lite0). Smaller runs keep reusing the arena, which is what makes it fast.
SHRINK_ARENA_INPUT_BYTES = 16 << 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where the model leaves a dimension dynamic

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which this runtime cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Said wherever the runtime refuses a GPU it cannot have, so the fix is in the message.
FALLBACK_HINT = (
    "run the GPU image (onnxruntime-gpu) on a node with the NVIDIA driver and a GPU allotted to the "
    "container, or allow CPU (--allow-cpu-fallback, ZEROSERVE_ALLOW_CPU_FALLBACK=true; "
    "resources.gpu.allowCpuFallback in a ModelService)"
)


def _onnxruntime_build() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return f"onnxruntime {ort.__version__}"


def execution_providers(device: str, allow_cpu_fallback: bool = False) -> list[str]:
    """The providers to ask a session for. A GPU asked of an onnxruntime built without CUDA is refused
    here, before the model is fetched, unless CPU was explicitly allowed: serving on CPU while the
    ModelService says gpu is the one outcome nobody asked for."""
    if device != "gpu":
        return [CPU]
    available = ort.get_available_providers()
    if CUDA in available:
        return [CUDA, CPU]
    if allow_cpu_fallback:
        return [CPU]
    raise ModelLoadError(
        f"--device gpu needs onnxruntime's {CUDA}, but this {_onnxruntime_build()} has only "
        f"{', '.join(available)}: {FALLBACK_HINT}"
    )


def provider_options(providers: list[str], cudnn_conv_algo_search: str) -> list[dict[str, str]]:
    """Each provider's options, in the providers' order: the CUDA provider's conv algorithm search."""
    return [{"cudnn_conv_algo_search": cudnn_conv_algo_search} if p == CUDA else {} for p in providers]


class OnnxModel:
    def __init__(
        self,
        name: str,
        path: Path,
        threads: int,
        device: str = "cpu",
        allow_cpu_fallback: bool = False,
        cudnn_conv_algo_search: str = "EXHAUSTIVE",
    ) -> None:
        self.name = name
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = execution_providers(device, allow_cpu_fallback)
        if device == "gpu" and CUDA not in providers:
            log.warning("--device gpu: %s has no %s; serving on CPU as allowed", _onnxruntime_build(), CUDA)
        if CUDA in providers and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu's CUDA provider finds the CUDA and cuDNN libraries of the nvidia-* wheels
            # (the GPU image's) only once they are loaded: nothing puts them on the loader's path.
            ort.preload_dlls()
        try:
            self.session = ort.InferenceSession(
                str(path),
                options,
                providers=providers,
                provider_options=provider_options(providers, cudnn_conv_algo_search),
            )
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(f"onnxruntime cannot load {path}: {e}") from e
        used = self.session.get_providers()[0]
        if CUDA in providers and used != CUDA:
            # onnxruntime-gpu lists CUDA whenever it was built with it, and a session whose CUDA provider
            # fails to start (no driver, no GPU in the container, a missing cuDNN) quietly runs on CPU;
            # onnxruntime's own error line above says which.
            if not allow_cpu_fallback:
                raise ModelLoadError(
                    f"--device gpu: {_onnxruntime_build()} could not start {CUDA} (its error is logged "
                    f"above) and the session would run on {used}: {FALLBACK_HINT}"
                )
            log.warning("--device gpu: %s did not start; serving on %s as allowed", CUDA, used)
        search = f", cuDNN conv algorithm search {cudnn_conv_algo_search}" if used == CUDA else ""
        log.info("model %s: execution provider %s, %d intra-op threads%s", name, used, threads, search)
        self.provider = used
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        if any(s.datatype == "BYTES" for s in self.inputs + self.outputs):
            raise ModelLoadError("models with string (BYTES) tensors are not supported by this runtime")
        self.input_by_name = {s.name: s for s in self.inputs}
        self.output_names = [s.name for s in self.outputs]
        # Batching merges requests along the first dimension, so every input and output must leave it open.
        self.batchable = all(s.shape and s.shape[0] == -1 for s in self.inputs + self.outputs)
        self.shrink = ort.RunOptions()
        self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        large = sum(a.nbytes for a in feeds.values()) >= SHRINK_ARENA_INPUT_BYTES
        try:
            return self.session.run(self.output_names, feeds, self.shrink if large else None)
        except (InvalidArgument, RuntimeException, Fail) as e:
            # The model loaded and ran its warm-up, so what fails now is this input: an index out of
            # range for a Gather, a dimension a Reshape cannot take, ...
            raise InvalidInput(f"the model cannot run on this input: {e}") from None

    def warmup(self, rows: int = 1) -> None:
        """One inference on zeros (the batch dimension `rows`, other dynamic ones 1), so the first request
        pays no lazy setup: at the shape the runs will have, since a provider may plan per shape."""
        feeds = {
            s.name: np.zeros(
                [d if d >= 0 else (rows if i == 0 and self.batchable else 1) for i, d in enumerate(s.shape)],
                dtype=DATATYPES[s.datatype],
            )
            for s in self.inputs
        }
        self.run(feeds)

    def check(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> None:
        """The request's tensors against the model's: names, datatypes, rank and fixed dimensions."""
        unknown = sorted(set(inputs) - set(self.input_by_name))
        if unknown:
            raise InvalidInput(
                f"unknown input {', '.join(repr(u) for u in unknown)}; model '{self.name}' takes "
                f"{', '.join(repr(s.name) for s in self.inputs)}"
            )
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise InvalidInput(f"missing input {', '.join(repr(m) for m in missing)}")
        if self.batchable and len({a.shape[0] for a in inputs.values() if a.ndim}) > 1:
            sizes = {n: a.shape[0] for n, a in inputs.items()}
            raise InvalidInput(f"inputs disagree on the batch dimension: {sizes}")
        for name, array in inputs.items():
            spec = self.input_by_name[name]
            if datatypes[name] != spec.datatype:
                raise InvalidInput(
                    f"input '{name}': datatype {datatypes[name]}, but the model takes {spec.datatype}"
                )
            if array.ndim != len(spec.shape):
                raise InvalidInput(
                    f"input '{name}': shape {list(array.shape)} has rank {array.ndim}, the model takes rank "
                    f"{len(spec.shape)} {list(spec.shape)}"
                )
            for got, want in zip(array.shape, spec.shape, strict=True):
                if want >= 0 and got != want:
                    got_shape, model_shape = list(array.shape), list(spec.shape)
                    raise InvalidInput(
                        f"input '{name}': shape {got_shape} does not fit the model's {model_shape}"
                    )

    def metadata(self) -> dict[str, object]:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
            # Optional in OIP v2's REST schema (additional properties are allowed, and MLServer sends
            # the same key); gRPC's ModelMetadataResponse has no field for it.
            "parameters": {"execution_provider": self.provider},
        }


def padded_rows(settings: RuntimeSettings, model: OnnxModel) -> int:
    """The batch size every batched run is padded to, or 0 for none (see --batch-padding)."""
    if settings.max_batch_size <= 1 or not model.batchable or settings.batch_padding == "off":
        return 0
    if settings.batch_padding == "auto" and model.provider != CUDA:
        return 0
    return settings.max_batch_size


def load_model(
    settings: RuntimeSettings,
    marks: dict[str, float] | None = None,
    on_fetched: Callable[[Fetched], None] | None = None,
) -> OnnxModel:
    """Fetch, load and warm up the model `settings` name: what the server and every function do once per
    process. Seconds per phase go into `marks` (fetch, load, warmup); `on_fetched` hears where the file
    came from (a cache hit or a download)."""
    begun = time.time()
    # Before the fetch: a GPU this onnxruntime cannot use must not wait out a large download to say so.
    execution_providers(settings.device, settings.allow_cpu_fallback)
    found = fetch(settings.model_uri, settings.cache_dir, settings.model_sha256)
    if on_fetched is not None:
        on_fetched(found)
    fetched = time.time()
    model = OnnxModel(
        settings.model_name,
        found.path,
        settings.intra_op_threads(),
        settings.device,
        settings.allow_cpu_fallback,
        settings.cudnn_conv_algo_search,
    )
    loaded = time.time()
    model.warmup(padded_rows(settings, model) or 1)
    if marks is not None:
        marks.update(fetch=fetched - begun, load=loaded - fetched, warmup=time.time() - loaded)
    return model
