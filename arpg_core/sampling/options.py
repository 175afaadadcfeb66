"""Sampling options as one dataclass, validated once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from arpg_core.config import ConfigBase
from arpg_core.errors import SamplingError
from arpg_core.sampling.plan import CFG_SCHEDULES, ORDERS, SCHEDULES

STEP_ATTENTION = ("causal", "full")


def is_whole(x) -> bool:
    """A whole number (64 or 64.0), not a bool, NaN, infinity or string."""
    try:
        return not isinstance(x, (bool, str)) and int(x) == x
    except (TypeError, ValueError, OverflowError):
        return False


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
    # How the tokens fed together in one step attend to each other in pass 1: "causal" as in
    # training (each sees the earlier ones in the order), or "full" as the authors' sampler runs
    # it (the published FID/IS were measured that way). The first step is causal either way.
    step_attention: str = "causal"

    PRESETS = {
        "paper": dict(steps=64, schedule="arccos", cfg_scale=4.0, cfg_schedule="constant", top_k=600,
                      step_attention="full"),
        "reference-script": dict(steps=256, schedule="arccos", cfg_scale=2.0, cfg_schedule="linear",
                                 step_attention="full"),
        "fast": dict(steps=32, schedule="arccos", cfg_scale=4.0),
    }

    def __post_init__(self):
        if isinstance(self.schedule, str) and self.schedule not in SCHEDULES:
            raise SamplingError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise SamplingError(f"unknown CFG schedule {self.cfg_schedule!r}; choose one of {CFG_SCHEDULES}")
        if isinstance(self.order, str) and self.order not in ORDERS:
            raise SamplingError(f"unknown order {self.order!r}; choose one of {ORDERS}")
        for name in ("cfg_scale", "temperature"):
            value = getattr(self, name)
            try:
                ok = not isinstance(value, (bool, str)) and math.isfinite(value) and value >= 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise SamplingError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.schedule, str):
            counts = list(self.schedule)
            if not counts or not all(is_whole(c) and c >= 1 for c in counts):
                raise SamplingError(f"an explicit schedule is a list of whole numbers >= 1 (tokens per step), "
                                    f"got {counts}")
            self.schedule = [int(c) for c in counts]
        if self.top_k is not None:
            if not is_whole(self.top_k) or self.top_k < 1:
                raise SamplingError(f"top_k must be an integer >= 1, got {self.top_k}")
            self.top_k = int(self.top_k)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not is_whole(self.steps) or self.steps < 1:
            raise SamplingError(f"steps must be a positive integer, got {self.steps}")
        self.steps = int(self.steps)  # 64.0 is accepted as 64
        if self.step_attention not in STEP_ATTENTION:
            raise SamplingError(f"unknown step_attention {self.step_attention!r}; choose one of {STEP_ATTENTION}")
