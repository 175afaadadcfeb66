"""Sampling options as one dataclass, validated once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from arpg_core.config import ConfigBase
from arpg_core.errors import SamplingError
from arpg_core.sampling.plan import CFG_SCHEDULES, ORDERS, SCHEDULES


@dataclass
class SamplingOptions(ConfigBase):
    steps: int = 64
    schedule: str | Sequence[int] = "arccos"
    cfg_scale: float = 4.0
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    order: str | Sequence[int] | torch.Tensor = "random"
    rope_interpolation: bool = True  # squeeze positions into the trained range on larger grids

    PRESETS = {
        "paper": dict(steps=64, schedule="arccos", cfg_scale=4.0, cfg_schedule="constant", top_k=600),
        "reference-script": dict(steps=256, schedule="arccos", cfg_scale=2.0, cfg_schedule="linear"),
        "fast": dict(steps=32, schedule="arccos", cfg_scale=4.0),
    }

    def __post_init__(self):
        if isinstance(self.schedule, str) and self.schedule not in SCHEDULES:
            raise SamplingError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise SamplingError(f"unknown CFG schedule {self.cfg_schedule!r}; choose one of {CFG_SCHEDULES}")
        if isinstance(self.order, str) and self.order not in ORDERS:
            raise SamplingError(f"unknown order {self.order!r}; choose one of {ORDERS}")
        if not (self.cfg_scale >= 0 and self.temperature >= 0):
            raise SamplingError("cfg_scale and temperature must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise SamplingError(f"steps must be a positive integer, got {self.steps}")
