"""A Triton Python-backend model that runs the repository's model.onnx with onnxruntime: the stand-in,
in tests, for Triton's onnxruntime backend, which the only tritonserver available here (the
nvidia-pytriton wheel's) does not have. It completes the model configuration from the ONNX file as that
backend's auto-complete does, so the operator's config.pbtxt is used with only its platform line changed.
"""

import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH; the test passes its packages' folder this way.
sys.path.extend(p for p in os.environ.get("ZEROSERVE_TEST_SITE_PACKAGES", "").split(os.pathsep) if p)

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
}


def _session(folder: str) -> ort.InferenceSession:
    return ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):  # type: ignore[no-untyped-def]
        session = _session(HERE)
        # With max_batch_size > 0 Triton owns the first dimension, as the onnxruntime backend assumes.
        skip = 1 if config.as_dict()["max_batch_size"] > 0 else 0
        for add, args in (
            (config.add_input, session.get_inputs()),
            (config.add_output, session.get_outputs()),
        ):
            for arg in args:
                dims = [d if isinstance(d, int) else -1 for d in arg.shape][skip:]
                add({"name": arg.name, "data_type": TYPES[arg.type], "dims": dims})
        return config

    def initialize(self, args):  # type: ignore[no-untyped-def]
        self.session = _session(os.path.join(args["model_repository"], args["model_version"]))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):  # type: ignore[no-untyped-def]
        # Triton hands over the requests its dynamic batcher gathered; each is answered on its own.
        responses = []
        for request in requests:
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs
            }
            values = self.session.run(None, feeds)
            tensors = [pb_utils.Tensor(name, value) for name, value in zip(self.outputs, values, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
