"""Importers of other projects' released models into this project's fake-quant pipeline and checkpoints."""
from .errors import ImportRefused
from .inference_yaml import ImportJob, job_from_flags, job_from_yaml, names_quant_ckpt
from .passionsr import ImportResult, build_fp_pipeline, import_passionsr, write_checkpoint

__all__ = ["ImportJob", "ImportRefused", "ImportResult", "build_fp_pipeline", "import_passionsr", "job_from_flags",
           "job_from_yaml", "names_quant_ckpt", "write_checkpoint"]
