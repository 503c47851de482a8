"""The least a Python gRPC server can do per inference: grpcio's asyncio server, with a ModelInfer that
only wraps raw_input_contents with np.frombuffer, runs the session on a thread pool and packs the output.
No validation, metrics, batching or admission. bench/runtime_throughput.py puts it beside zeroserve's
gRPC path, to tell what the runtime costs from what grpcio itself costs.

    python bench/grpc_floor_server.py MODEL PORT PARALLEL THREADS
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2, service_pb2_grpc


def main() -> None:
    model, port, parallel, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    pool = concurrent.futures.ThreadPoolExecutor(parallel)

    def infer(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        feeds = {
            i.name: np.frombuffer(raw, np.float32).reshape(list(t.shape))
            for i, t, raw in zip(inputs, request.inputs, request.raw_input_contents, strict=True)
        }
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        for meta, value in zip(session.get_outputs(), session.run(None, feeds), strict=True):
            tensor = response.outputs.add()
            tensor.name, tensor.datatype = meta.name, "FP32"
            tensor.shape.extend(value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
            return await asyncio.get_running_loop().run_in_executor(pool, infer, request)

    async def serve() -> None:
        # The same transport options as the runtime's gRPC server.
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.http2.lookahead_bytes", 8 << 20),
                ("grpc.http2.max_frame_size", 1 << 20),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
