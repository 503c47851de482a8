"""gRPC transport: inference.GRPCInferenceService (Open Inference Protocol v2), with the servicer base
and messages that tritonclient ships, so tritonclient.grpc works unmodified."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from zeroserve_runtime import memory
from zeroserve_runtime.dataplane import DataPlane
from zeroserve_runtime.errors import InvalidInput, ServingError
from zeroserve_runtime.protocol.tensors import (
    NUMPY_TO_DATATYPE,
    InferRequest,
    RequestedOutput,
    checked_shape,
    element_count,
    from_buffer,
    numpy_dtype,
)

log = logging.getLogger("zeroserve.runtime")

# What a message arriving holds per byte, at its peak: the core's buffer, its copy as Python bytes and
# the parsed message overlap while it is handed over (a 24-request burst at 2x was OOM-killed).
GRPC_ARRIVING_COST = 2

# Which InferTensorContents field carries each datatype when raw contents are not used.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def decode_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        dtype = numpy_dtype(tensor.datatype, name)
        shape = checked_shape(list(tensor.shape), name)
        if raw:
            data = raw[i]  # each index into the repeated field copies the whole tensor out of the message
            inputs[name] = from_buffer(data, 0, len(data), dtype, shape, name)
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            values = getattr(tensor.contents, field) if field else []
            count = element_count(shape)
            if len(values) != count:
                raise InvalidInput(
                    f"input '{name}': shape {list(shape)} needs {count} values, got {len(values)}"
                )
            try:
                array = np.asarray(values)
                if dtype.kind in "iu" and array.size:
                    info = np.iinfo(dtype)
                    if array.min() < info.min or array.max() > info.max:
                        raise OverflowError
                inputs[name] = array.astype(dtype).reshape(shape)
            except (OverflowError, ValueError, TypeError):
                raise InvalidInput(f"input '{name}': values do not fit {tensor.datatype}") from None
        datatypes[name] = tensor.datatype
    outputs = [RequestedOutput(o.name, True) for o in request.outputs] or None
    return InferRequest(inputs=inputs, datatypes=datatypes, outputs=outputs, id=request.id or None)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, max_message_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_message_bytes = max_message_bytes

    async def _abort(self, context: grpc.aio.ServicerContext, error: ServingError) -> None:
        await context.abort(getattr(grpc.StatusCode, error.grpc_code), error.message)

    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return service_pb2.ModelReadyResponse(
                ready=self.dataplane.model_ready(request.name, request.version)
            )
        except ServingError as e:
            await self._abort(context, e)

    async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        meta = self.dataplane.server_metadata()
        return service_pb2.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        try:
            meta = self.dataplane.model_metadata(request.name, request.version)
        except ServingError as e:
            await self._abort(context, e)
            return None
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def RepositoryIndex(self, request, context):  # type: ignore[no-untyped-def]
        try:
            index = self.dataplane.repository_index(request.repository_name, request.ready)
        except ServingError as e:
            await self._abort(context, e)
            return None
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(
            models=[entry(name=m.name, version=m.version, state=m.state, reason=m.reason) for m in index]
        )

    async def RepositoryModelLoad(self, request, context):  # type: ignore[no-untyped-def]
        try:
            self.dataplane.repository_change(request.model_name, "load")
        except ServingError as e:
            await self._abort(context, e)

    async def RepositoryModelUnload(self, request, context):  # type: ignore[no-untyped-def]
        try:
            self.dataplane.repository_change(request.model_name, "unload")
        except ServingError as e:
            await self._abort(context, e)

    async def ModelInfer(self, requests, context):  # type: ignore[no-untyped-def]
        """Served as client-streaming (the wire is the same for a unary call), so that it runs before
        the message is read: gRPC only says how large a message is once the whole of it has arrived, and
        two dozen 60 MB messages read at once before any could be refused are what OOM-killed the
        server. So each holds room for the largest message while it arrives, and its real size after."""
        dp = self.dataplane
        try:
            await dp.acquire_unknown("grpc", self.max_message_bytes * GRPC_ARRIVING_COST)
        except ServingError as e:
            await self._abort(context, e)
            return None
        held = self.max_message_bytes * GRPC_ARRIVING_COST
        try:
            request = await context.read()
            if request is grpc.aio.EOF:
                raise InvalidInput("the request has no message")
            # The message and each raw tensor copied out of it (protobuf hands out copies); typed contents
            # become Python numbers on their way into an array, as JSON does.
            nbytes = request.ByteSize() * (2 if request.raw_input_contents else memory.JSON_COST)
            dp.admission.known(held, nbytes)
            held = nbytes
            name, version = request.model_name, request.model_version
            started = time.perf_counter()
            decoded = dp.decoded("grpc", decode_request, request)
            del request
            response = await dp.infer(name, version, decoded, "grpc")
            del decoded
            # gRPC carries the same cold-start and timing headers as REST, as trailing metadata: it goes
            # out with the status, where sending initial metadata first costs its own round through the
            # core (a tenth of the event loop's time under load).
            context.set_trailing_metadata(
                tuple(dp.cold_start.response_headers(time.perf_counter() - started, started).items())
            )
        except ServingError as e:
            await self._abort(context, e)
            return None
        except Exception:
            log.exception("unexpected error in ModelInfer")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            return None
        finally:
            dp.release(held)
        out = service_pb2.ModelInferResponse(
            model_name=response.model_name, model_version=response.model_version or "", id=response.id or ""
        )
        for name, array in response.outputs.items():
            tensor = out.outputs.add()
            tensor.name = name
            tensor.datatype = NUMPY_TO_DATATYPE[array.dtype]
            tensor.shape.extend(array.shape)
            out.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return out


def build_server(dataplane: DataPlane, address: str, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Image tensors are hundreds of KB: a wider flow-control window and larger frames than
            # HTTP/2's 64 KB / 16 KB defaults cut window updates and frame handling per request
            # (bench/runtime_throughput.py). But every stream may send its window's worth before the
            # server has looked at it, refused or not: memory the in-flight budget cannot count. So 1 MB,
            # and no BDP probing, which on loopback grew the windows until 24 refused 60 MB requests
            # took 450 MB (and got the server OOM-killed in a 1.5 GiB cgroup).
            ("grpc.http2.lookahead_bytes", 1 << 20),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.max_frame_size", 1 << 20),
        ]
    )
    _add_servicer(InferenceServicer(dataplane, max_message_bytes), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server


class _Handlers:
    """Takes the method handlers tritonclient's generated code would register."""

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, object]) -> None:
        self.service, self.handlers = service, handlers


def _add_servicer(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """tritonclient's handlers, but ModelInfer's reads its request itself (see ModelInfer)."""
    taken = _Handlers()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, taken)
    taken.handlers["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=service_pb2.ModelInferRequest.FromString,
        response_serializer=service_pb2.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(taken.service, taken.handlers),))
    server.add_registered_method_handlers(taken.service, taken.handlers)
