"""`passion_sr_z0`, the one non-engine step of a written repository's tile ensemble: z0 from the
encoder's latent and the UNet's eps, by the pipeline's own formula (float64, models/pipeline.py).

Its config.pbtxt parameters carry the artifact's constants (sqrt_alpha, sqrt_one_minus_alpha).
"""
from __future__ import annotations

import json

import torch

from ..models.pipeline import z0_from_eps


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v.get("string_value", "") for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.sqrt_a = float(params["sqrt_alpha"])
        self.sqrt_1ma = float(params["sqrt_one_minus_alpha"])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for req in requests:
            z = torch.from_numpy(pb_utils.get_input_tensor_by_name(req, "latent").as_numpy())
            eps = torch.from_numpy(pb_utils.get_input_tensor_by_name(req, "eps").as_numpy())
            z0 = z0_from_eps(z, eps, self.sqrt_a, self.sqrt_1ma).numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("z0", z0)]))
        return responses
