"""Triton python-backend model that serves an ONNX file with onnxruntime, for the batching benchmark.

`benches/batching.sh` copies this file to `REPO/<name>/1/model.py` beside the same `model.onnx`
that switchyard serves, and writes `config.pbtxt` (backend "python", the ONNX model's one input and
one output, max_batch_size, one KIND_CPU instance, with or without dynamic_batching).

With dynamic batching on, Triton hands `execute()` every request of the batch it formed: their
inputs are concatenated along the batch dimension, the session runs once, and the output is split
back per request. Without it the list holds one request and the same code runs it alone.

Config parameters (string values):
  intra_op_threads  onnxruntime intra-op threads (default "1": switchyard's tract instance runs a
                    request on its instance thread alone, so both servers get one thread per instance)
  inter_op_threads  onnxruntime inter-op threads (default "1")
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if len(config["input"]) != 1 or len(config["output"]) != 1:
            raise pb_utils.TritonModelException("this model handles one input and one output")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.input_dtype = pb_utils.triton_string_to_numpy(config["input"][0]["data_type"])

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = int(params.get("inter_op_threads", "1"))
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.onnx_input = self.session.get_inputs()[0].name
        self.onnx_output = self.session.get_outputs()[0].name

    def execute(self, requests):
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        if len(arrays) == 1:
            batch = arrays[0]
        else:
            batch = np.concatenate(arrays, axis=0)
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        out = self.session.run([self.onnx_output], {self.onnx_input: batch})[0]
        # Split the batch output back at the requests' boundaries.
        bounds = np.cumsum([a.shape[0] for a in arrays])[:-1]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in np.split(out, bounds, axis=0)
        ]
