"""Known-token canvases for editing, and windowed decoding of canvases larger than the model's grid.

Inpainting, outpainting and resolution expansion are all the same sampler call with known tokens;
these helpers only build the (known_tokens, known_mask) pair, or split a big canvas into windows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from arpg_core.errors import SamplingError
from arpg_core.models.arpg import ARPG
from arpg_core.sampling.options import SamplingOptions
from arpg_core.sampling.plan import scaled_steps
from arpg_core.sampling.sampler import UNKNOWN, StepEvent, make_generators, sample_steps


@dataclass(frozen=True)
class Canvas:
    tokens: torch.Tensor  # [H, W] long, UNKNOWN where not given
    known_mask: torch.Tensor  # [H, W] bool

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)


def inpaint_canvas(tokens: torch.Tensor, regenerate: torch.Tensor) -> Canvas:
    """tokens [h, w]; regenerate [h, w] bool marks the cells to generate anew."""
    regenerate = regenerate.bool()
    if regenerate.shape != tokens.shape:
        raise SamplingError(f"mask {tuple(regenerate.shape)} does not match tokens {tuple(tokens.shape)}")
    if not regenerate.any():
        raise SamplingError("the mask is empty: paint the region to regenerate")
    return Canvas(tokens.masked_fill(regenerate, UNKNOWN), ~regenerate)


def padding(pad: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) as whole cells >= 0, not all zero; anything else a SamplingError."""
    try:
        top, right, bottom, left = (int(p) for p in pad)
        if any(int(p) != p for p in pad):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise SamplingError(f"padding must be four whole numbers of cells (top, right, bottom, left), "
                            f"got {pad!r}") from None
    if min(top, right, bottom, left) < 0:
        raise SamplingError(f"padding must be >= 0 cells per side, got {tuple(pad)}")
    if top + right + bottom + left == 0:
        raise SamplingError("nothing to outpaint: every side has zero padding")
    return top, right, bottom, left


def outpaint_canvas(tokens: torch.Tensor, pad: Sequence[int]) -> Canvas:
    """Place tokens [h, w] inside a larger canvas; pad = (top, right, bottom, left) in cells."""
    top, right, bottom, left = padding(pad)
    h, w = tokens.shape
    canvas = torch.full((top + h + bottom, left + w + right), UNKNOWN, dtype=torch.long)
    canvas[top:top + h, left:left + w] = tokens
    return Canvas(canvas, canvas != UNKNOWN)


def expand_canvas(tokens: torch.Tensor) -> Canvas:
    """Resolution expansion: the source grid on the even cells (2i, 2j) of a grid twice as large."""
    h, w = tokens.shape
    canvas = torch.full((2 * h, 2 * w), UNKNOWN, dtype=torch.long)
    canvas[::2, ::2] = tokens
    return Canvas(canvas, canvas != UNKNOWN)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride)) + [size - window]
    return sorted(set(starts))


def plan_windows(known_mask: torch.Tensor, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows (r0, c0, h, w) that cover the canvas, most-known first, each with work to do."""
    h, w = known_mask.shape
    wh, ww = min(window, h), min(window, w)
    boxes = [(r, c, wh, ww) for r in window_starts(h, window, stride) for c in window_starts(w, window, stride)]
    covered = known_mask.clone()
    plan = []
    while boxes:
        # Decode next the window that has the largest share of fixed tokens: the most context.
        share = [covered[r:r + bh, c:c + bw].float().mean().item() for r, c, bh, bw in boxes]
        best = boxes.pop(max(range(len(boxes)), key=share.__getitem__))
        r, c, bh, bw = best
        if not covered[r:r + bh, c:c + bw].all():
            plan.append(best)
            covered[r:r + bh, c:c + bw] = True
    return plan


def sample_windowed(
    model: ARPG,
    labels,
    canvas: Canvas,
    *,
    stride: int | None = None,
    generator=None,
    **options,
) -> Iterator[StepEvent]:
    """Decode a canvas of any size in overlapping windows of the model's trained grid; each window
    sees the tokens already fixed inside it at local positions (always in the trained range)."""
    g = model.config.grid_size
    stride = stride or max(1, g // 2)
    if not 1 <= stride <= g:
        raise SamplingError(f"stride must be 1..{g} cells (the window), got {stride}: a larger one leaves gaps")
    # Windows always sit inside the trained grid: no position interpolation.
    opts = replace(options.pop("options", None) or SamplingOptions(**options), rope_interpolation=False)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    batch = labels.shape[0]
    gens = make_generators(generator, batch)
    grid = canvas.tokens.expand(batch, *canvas.grid).clone().to(model.embeddings.weight.device)
    known = canvas.known_mask.clone()
    windows = plan_windows(known, g, stride)
    step_base = 0
    total = _total_steps(windows, known, opts.steps)
    for r, c, bh, bw in windows:
        local_known = known[r:r + bh, c:c + bw]
        sub = grid[:, r:r + bh, c:c + bw]
        event = None
        for event in sample_steps(model, labels, known_tokens=sub, known_mask=local_known.expand(batch, bh, bw),
                                  generator=gens, options=opts):
            lr, lc = event.positions // bw, event.positions % bw
            positions = (lr + r) * canvas.grid[1] + (lc + c)
            full = grid.clone()
            full[:, r:r + bh, c:c + bw] = event.tokens
            yield StepEvent(step_base + event.step, total, positions, full, event.probs, event.order,
                            event.num_known)
        grid[:, r:r + bh, c:c + bw] = event.tokens
        known[r:r + bh, c:c + bw] = True
        step_base += event.num_steps


def _total_steps(windows, known: torch.Tensor, steps: int) -> int:
    known = known.clone()
    total = 0
    for r, c, bh, bw in windows:
        n = bh * bw
        total += scaled_steps(min(steps, n), int((~known[r:r + bh, c:c + bw]).sum()), n)
        known[r:r + bh, c:c + bw] = True
    return total
