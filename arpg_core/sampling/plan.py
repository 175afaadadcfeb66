"""The per-call decoding plan, computed up front as plain data: order, tokens per step, CFG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from arpg_core.errors import SamplingError

SCHEDULES = ("arccos", "cosine", "linear")
ORDERS = ("random", "raster", "spiral", "edges-in")
CFG_SCHEDULES = ("constant", "linear")


def masked_ratio(schedule: str, progress: float) -> float:
    """Fraction of tokens still masked after a step that ends at `progress` in (0, 1]."""
    if schedule == "arccos":
        return math.acos(min(progress, 1.0)) / (math.pi / 2)
    if schedule == "cosine":
        return math.cos(math.pi / 2 * progress)
    if schedule == "linear":
        return 1.0 - progress
    raise SamplingError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES} or a list of counts")


def tokens_per_step(n: int, steps: int, schedule: str | Sequence[int] = "arccos") -> list[int]:
    """How many of `n` tokens each of `steps` steps decodes; every step decodes at least one."""
    if not isinstance(schedule, str):
        counts = [int(c) for c in schedule]
        if any(c < 1 for c in counts) or sum(counts) != n:
            raise SamplingError(f"an explicit schedule needs positive counts summing to {n}, got {counts}")
        return counts
    if not 1 <= steps <= n:
        raise SamplingError(f"steps must be between 1 and {n} (the tokens to decode), got {steps}")
    counts, done = [], 0
    for s in range(steps):
        left = n - done
        if s == steps - 1:
            count = left
        else:
            masked = min(max(int(n * masked_ratio(schedule, (s + 1) / steps)), 1), left - 1)
            # Leave at least one token for each remaining step so exactly `steps` steps run.
            count = min(left - masked, left - (steps - 1 - s))
        counts.append(count)
        done += count
    return counts


def scaled_steps(steps: int, remaining: int, total: int) -> int:
    """With known tokens, the step count shrinks in proportion to the tokens left to decode."""
    if remaining == total:
        return steps
    return min(remaining, max(1, round(steps * remaining / total)))


def cfg_per_step(counts: Sequence[int], scale: float, schedule: str, total: int) -> list[float]:
    """Guidance scale at each step; `linear` ramps with the fraction decoded after the step."""
    if schedule not in CFG_SCHEDULES:
        raise SamplingError(f"unknown CFG schedule {schedule!r}; choose one of {CFG_SCHEDULES}")
    if schedule == "constant":
        return [float(scale)] * len(counts)
    out, done = [], total - sum(counts)  # known tokens count as already decoded
    for c in counts:
        done += c
        out.append(1.0 + (scale - 1.0) * done / total)
    return out


def _ring_angle(grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(grid_h, dtype=torch.float64)[:, None].expand(grid_h, grid_w) - (grid_h - 1) / 2
    c = torch.arange(grid_w, dtype=torch.float64)[None, :].expand(grid_h, grid_w) - (grid_w - 1) / 2
    ring = torch.maximum(r.abs() / grid_h, c.abs() / grid_w).flatten()
    return ring, torch.atan2(r, c).flatten()


def position_rank(kind: str, grid_h: int, grid_w: int) -> torch.Tensor:
    """A deterministic order of all positions: [N] positions, first decoded first."""
    n = grid_h * grid_w
    if kind == "raster":
        return torch.arange(n)
    if kind in ("spiral", "edges-in"):
        ring, angle = _ring_angle(grid_h, grid_w)
        ring = (ring * 1e4).round()  # equal rings compare equal despite float noise
        key = (ring if kind == "spiral" else -ring) * 10 + (angle + math.pi) / (2 * math.pi)
        return torch.argsort(key, stable=True)
    raise SamplingError(f"unknown order {kind!r}; choose one of {ORDERS} or pass a permutation")


@dataclass(frozen=True)
class StepPlan:
    order: torch.Tensor  # [B, N] every position once: the known ones first, then decoding order
    num_known: int
    counts: list[int]  # tokens decoded at each step
    cfg: list[float]  # guidance scale at each step

    @property
    def num_steps(self) -> int:
        return len(self.counts)


def full_order(
    kind: str | Sequence[int] | torch.Tensor,
    known: torch.Tensor,
    grid: tuple[int, int],
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """known: [B, N] bool -> [B, N] permutation with each row's known positions first.

    `kind` is an order name or an explicit permutation ([N], or [B, N] one per row); known
    positions are moved to the front, keeping the relative order of the rest."""
    b, n = known.shape
    explicit = None
    if not isinstance(kind, str):
        explicit = torch.as_tensor(kind, dtype=torch.long).cpu()
        if explicit.numel() == 0 or explicit.numel() % n:
            raise SamplingError(f"an explicit order needs 1 or {b} rows of {n} positions, got {explicit.numel()} "
                                "numbers")
        explicit = explicit.reshape(-1, n)
    if explicit is not None and explicit.shape[0] not in (1, b):
        raise SamplingError(f"an explicit order needs 1 or {b} rows of {n} positions")
    fixed = position_rank(kind, *grid) if explicit is None and kind != "random" else None
    rows = []
    for i in range(b):
        if fixed is not None:
            rank = fixed
        elif explicit is not None:
            rank = explicit[min(i, explicit.shape[0] - 1)]
            if not torch.equal(rank.sort().values, torch.arange(n)):
                raise SamplingError(f"an explicit order must be a permutation of 0..{n - 1}")
        else:
            rank = torch.randperm(n, generator=generators[i])
        k = known[i].cpu()[rank]
        rows.append(torch.cat([rank[k], rank[~k]]))
    return torch.stack(rows)
