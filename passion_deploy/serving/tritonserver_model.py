"""The whole-image SR model as a Triton Python-backend model (`passion_sr`).

A repository's `passion_sr/1/model.py` is one import of TritonPythonModel from here, so the
model is this package's code, tested with it. Its config.pbtxt parameters carry a ModelSpec and
SRSettings (spec.py) plus `max_batch`; each instance loads the model once.

Why a Python-backend model and not PyTriton's `bind`: PyTriton's proxy answers any exception
of the bound function with HTTP 500 and a traceback for the whole batch, and cannot carry an
empty tensor at all. A Python-backend model answers each request of a batch on its own, a bad
one with `TritonError(..., INVALID_ARG)`: HTTP 400 / gRPC INVALID_ARGUMENT and one sentence,
the others of the batch unaffected. PyTriton still runs the server (server.py).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .service import BadRequest, SRService
from .spec import ModelSpec, SRSettings

INPUTS = ("image", "encoded")
OUTPUT = "sr"


def _load_error_sentence(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{e.__class__.__name__}: {msg}" if msg else e.__class__.__name__


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        error_file = params.get("load_error_file")
        try:
            base = Path(args["model_repository"]) / args["model_version"]
            spec = ModelSpec.from_params(params, base=base)
            if args.get("model_instance_kind") == "GPU":  # one instance per GPU Triton gives it
                import torch

                device = int(args.get("model_instance_device_id", 0))
                torch.cuda.set_device(device)
                spec = replace(spec, device=f"cuda:{device}")
            self.service = SRService(spec.load(), SRSettings.from_params(params), int(params.get("max_batch") or 1))
        except Exception as e:
            # passion-serve reads this one line back to say why the model did not load
            if error_file:
                Path(error_file).write_text(_load_error_sentence(e) + "\n", encoding="utf-8")
            raise
        print(f"passion_sr: {self.service.model.description}; tiles per call up to {self.service.max_batch}",
              file=sys.stderr, flush=True)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        parsed = []
        for req in requests:
            tensors = {n: pb_utils.get_input_tensor_by_name(req, n) for n in INPUTS}
            arrays = {n: (t.as_numpy() if t is not None else None) for n, t in tensors.items()}
            parsed.append(self.service.parse(arrays["image"], arrays["encoded"]))
        responses = []
        for out in self.service.run(parsed):
            if isinstance(out, BadRequest):
                err = pb_utils.TritonError(str(out), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
            elif isinstance(out, Exception):
                err = pb_utils.TritonError(f"super-resolution failed ({_load_error_sentence(out)})")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, out)]))
        return responses

    def finalize(self):
        self.service = None
