"""ARPG Studio core: the ARPG model, the VQ tokenizer, loading and the parallel sampler."""

from arpg_core.errors import (
    ARPGError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    DataError,
    HubUnavailableError,
    SamplingError,
    ShapeMismatchError,
    UnsafeCheckpointError,
)
from arpg_core.loading import build_model, build_tokenizer, load_model, load_tokenizer, save_checkpoint
from arpg_core.models.arpg import ARPG, ARPGConfig
from arpg_core.sampling.editing import Canvas, expand_canvas, inpaint_canvas, outpaint_canvas, sample_windowed
from arpg_core.sampling.options import SamplingOptions
from arpg_core.sampling.sampler import UNKNOWN, StepEvent, generate, sample_steps
from arpg_core.tokenizer.vq import VQConfig, VQModel

__all__ = [
    "ARPG", "ARPGConfig", "ARPGError", "Canvas", "CheckpointError", "CheckpointNotFoundError",
    "ConfigError", "CorruptCheckpointError", "DataError", "HubUnavailableError", "SamplingError",
    "SamplingOptions", "ShapeMismatchError", "StepEvent", "UNKNOWN", "UnsafeCheckpointError",
    "VQConfig", "VQModel", "build_model", "build_tokenizer", "expand_canvas", "generate",
    "inpaint_canvas", "load_model", "load_tokenizer", "outpaint_canvas", "sample_steps",
    "sample_windowed", "save_checkpoint",
]
