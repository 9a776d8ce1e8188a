"""A Triton python-backend model that runs the repository's ``model.onnx`` with ONNX
Runtime: the stand-in, in the tests and bench/triton.py, for Triton's onnxruntime
backend, which the Triton of the ``nvidia-pytriton`` wheel lacks
(tests/triton_support.py). It takes the CUDA provider where the Triton environment's
onnxruntime has it (onnxruntime-gpu) and ONNX Runtime's default threads, as the
in-process session does.

Triton's dynamic batcher hands ``execute`` several requests at once; they run as one
ONNX Runtime call. Runs inside Triton's python stub, in the Triton environment's
interpreter, not in the tests' (nothing of facestream is importable here).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(model), providers=providers)

    def execute(self, requests):
        chips = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        (out,) = self.session.run([self.output], {self.input: np.concatenate(chips)})
        responses, start = [], 0
        for part in chips:
            rows = np.ascontiguousarray(out[start : start + len(part)], np.float32)
            start += len(part)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, rows)]))
        return responses
