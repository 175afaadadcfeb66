"""Randomized parallel decoding: an iterator of step events and a plain `generate`."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from arpg_core.errors import SamplingError
from arpg_core.models.arpg import ARPG
from arpg_core.sampling.options import SamplingOptions, is_whole
from arpg_core.sampling.plan import StepPlan, cfg_per_step, full_order, scaled_steps, tokens_per_step

UNKNOWN = -1  # sentinel for not-yet-decoded cells in event grids


@dataclass
class StepEvent:
    step: int  # 0-based
    num_steps: int
    positions: torch.Tensor  # [B, n] raster positions decoded in this step
    tokens: torch.Tensor  # [B, H, W] decoded so far, UNKNOWN elsewhere (a copy)
    probs: torch.Tensor | None  # [B, n] probability of each chosen token, when asked
    order: torch.Tensor  # [B, N] the full order (known positions first)
    num_known: int

    @property
    def done(self) -> bool:
        return self.step == self.num_steps - 1


def seeded(seed: int) -> torch.Generator:
    """A CPU generator from an integer seed; a seed torch cannot hold is a SamplingError."""
    try:
        return torch.Generator().manual_seed(int(seed))
    except (RuntimeError, ValueError, OverflowError):
        raise SamplingError(f"seed {seed} is out of range: use 0 to {2**64 - 1}") from None


def make_generators(generator, batch: int) -> list[torch.Generator]:
    """One CPU generator per row: a list as given, or rows seeded from one generator / seed."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise SamplingError(f"got {len(generator)} generators for a batch of {batch}")
        return [g if g.device.type == "cpu" else _cpu_twin(g) for g in generator]
    if isinstance(generator, int):
        return [seeded(generator + i) for i in range(batch)]
    if generator is None:
        generator = torch.Generator()
        generator.seed()  # a fresh nondeterministic seed; the global RNG is left alone
    seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device)
    return [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]


def _cpu_twin(generator: torch.Generator) -> torch.Generator:
    """The sampler draws on the CPU (the same numbers on every device): a CUDA generator seeds
    a CPU one, deterministically."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
    return torch.Generator().manual_seed(int(seed))


GREEDY_BELOW = 1e-6  # temperatures under this draw the most likely token
MAX_GRID_SIDE = 256  # tokens per side: larger grids are refused before their cache is allocated


def grid_shape(grid) -> tuple[int, int]:
    """(rows, cols) as two ints from 1 to MAX_GRID_SIDE (16 or 16.0), or SamplingError."""
    if len(grid) != 2 or not all(is_whole(g) for g in grid):
        raise SamplingError(f"grid must be two whole numbers (rows, cols), got {grid!r}")
    grid = (int(grid[0]), int(grid[1]))
    if min(grid) < 1 or max(grid) > MAX_GRID_SIDE:
        raise SamplingError(f"grid must be between 1x1 and {MAX_GRID_SIDE}x{MAX_GRID_SIDE} tokens, got {grid}")
    return grid


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits [..., V] float32 -> logits with excluded entries at -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def draw(logits: torch.Tensor, temperature: float, top_k, top_p, uniforms: torch.Tensor):
    """logits [B, n, V], uniforms [B, n] in [0, 1) -> (tokens [B, n], their probabilities). A
    temperature below GREEDY_BELOW is greedy: dividing by it would overflow to infinity."""
    if temperature < GREEDY_BELOW:
        probs = logits.softmax(-1)
        tokens = logits.argmax(-1)
    else:
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        cdf = probs.cumsum(-1)
        target = (uniforms.to(cdf.device) * cdf[..., -1])[..., None]
        # right=True: the first entry whose cdf exceeds the target, so a token filtered out (zero
        # probability, a flat stretch of the cdf) is never drawn, not even for a uniform of 0
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)
    drawn = probs.gather(-1, tokens[..., None]).squeeze(-1)
    # one NaN or infinite logit makes its row's softmax NaN, so the drawn token's probability shows it:
    # a check on [B, n], not on every logit
    if not torch.isfinite(drawn).all():
        raise SamplingError("the model gave non-finite logits (NaN or infinity): its weights may be corrupt, or "
                            "cfg_scale is too large")
    return tokens, drawn


def _known_rows(known_tokens, known_mask, batch: int, grid: tuple[int, int], vocab: int, device):
    n = grid[0] * grid[1]
    if (known_tokens is None) != (known_mask is None):
        raise SamplingError("known_tokens and known_mask go together: give both, or neither")
    if known_mask is None:
        return torch.zeros(batch, n, dtype=torch.long, device=device), torch.zeros(batch, n, dtype=torch.bool)
    mask = torch.as_tensor(known_mask, dtype=torch.bool).cpu()
    tokens = torch.as_tensor(known_tokens, dtype=torch.long).cpu()
    if mask.shape[-2:] != grid or tokens.shape[-2:] != grid:
        raise SamplingError(f"known tokens and mask must be [B, {grid[0]}, {grid[1]}] or [{grid[0]}, "
                            f"{grid[1]}], got {tuple(tokens.shape)} and {tuple(mask.shape)}")
    mask, tokens = mask.reshape(-1, n), tokens.reshape(-1, n)
    for name, rows in (("mask", mask), ("tokens", tokens)):
        if rows.shape[0] not in (1, batch):
            raise SamplingError(f"known {name} has {rows.shape[0]} rows for a batch of {batch}: give 1 or {batch}")
    mask, tokens = mask.expand(batch, n), tokens.expand(batch, n)
    bad = mask & ((tokens < 0) | (tokens >= vocab))
    if bad.any():
        raise SamplingError(f"known tokens must be image codes 0..{vocab - 1}; got {tokens[bad][0].item()} "
                            f"at {int(bad.sum())} known cell(s)")
    tokens = tokens.to(device)
    counts = mask.sum(1)
    if not torch.all(counts == counts[0]):
        raise SamplingError("every row must have the same number of known tokens")
    if int(counts[0]) == n:
        raise SamplingError("every token is already known: nothing to generate")
    return tokens, mask


def make_plan(opts: SamplingOptions, known: torch.Tensor, grid, generators, n_total: int) -> StepPlan:
    num_known = int(known[0].sum())
    remaining = n_total - num_known
    steps = scaled_steps(opts.steps, remaining, n_total) if isinstance(opts.schedule, str) else opts.steps
    counts = tokens_per_step(remaining, steps, opts.schedule)
    cfg = cfg_per_step(counts, opts.cfg_scale, opts.cfg_schedule, n_total)
    return StepPlan(full_order(opts.order, known, grid, generators), num_known, counts, cfg)


@torch.inference_mode()
def sample_steps(
    model: ARPG,
    labels: Sequence[int] | torch.Tensor,
    *,
    known_tokens: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | int | None = None,
    return_probs: bool = False,
    **options,
) -> Iterator[StepEvent]:
    """Decode [B, H, W] token grids, yielding one StepEvent per step. See SamplingOptions."""
    opts = options.pop("options", None)
    if opts is not None and options:
        raise SamplingError(f"give options= or separate settings ({', '.join(sorted(options))}), not both")
    opts = opts or SamplingOptions(**options)
    cfg = model.config
    device = model.embeddings.weight.device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    batch = labels.shape[0]
    if batch == 0:
        raise SamplingError("nothing to sample: give at least one class label")
    if grid is None:
        grid = tuple(known_mask.shape[-2:]) if known_mask is not None else (cfg.grid_size, cfg.grid_size)
    grid = grid_shape(grid)
    n = grid[0] * grid[1]
    known_tok, known = _known_rows(known_tokens, known_mask, batch, grid, cfg.vocab_size, device)
    gens = make_generators(generator, batch)
    plan = make_plan(opts, known, grid, gens, n)
    scale = (grid[0] / cfg.grid_size, grid[1] / cfg.grid_size) if opts.rope_interpolation else (1.0, 1.0)
    rope = model.rope_table(grid[0], grid[1], scale=tuple(max(1.0, s) for s in scale))
    yield from _decode(model, labels, known_tok, plan, rope, gens, opts, grid, return_probs)


def _decode(model, labels, known_tok, plan: StepPlan, rope, gens, opts, grid, return_probs):
    batch, n = plan.order.shape
    device = labels.device
    order = plan.order.to(device)
    use_cfg = any(s != 1.0 for s in plan.cfg)
    cls = model.class_tokens(labels)
    if use_cfg:
        cls = torch.cat([cls, model.class_tokens(torch.full_like(labels, -1))])
    rows = 2 if use_cfg else 1
    k = plan.num_known
    cache = model.new_cache(batch * rows, 1 + k + sum(plan.counts[:-1]), rope)
    grid_tokens = torch.full((batch, n), UNKNOWN, dtype=torch.long, device=device)
    grid_tokens.scatter_(1, order[:, :k], known_tok.gather(1, order[:, :k]))
    # Step 0 feeds the class token and every known token in one pass.
    feed = torch.cat([cls[:, None], grid_tokens.gather(1, order[:, :k]).repeat(rows, 1)], dim=1)
    slots = torch.cat([torch.zeros_like(order[:, :1]), order[:, :k] + 1], dim=1).repeat(rows, 1)
    done = k
    for step, count in enumerate(plan.counts):
        targets = order[:, done:done + count]  # [B, n]
        causal = step == 0 or opts.step_attention == "causal"  # step 0: the class never sees known tokens
        logits = model.decode_step(feed, slots, (targets + 1).repeat(rows, 1), cache, causal=causal)
        if use_cfg:
            cond, uncond = logits.chunk(2)
            logits = uncond + (cond - uncond) * plan.cfg[step]
        uniforms = torch.stack([torch.rand(count, generator=g) for g in gens])
        tokens, probs = draw(logits, opts.temperature, opts.top_k, opts.top_p, uniforms)
        grid_tokens.scatter_(1, targets, tokens)
        done += count
        yield StepEvent(step, plan.num_steps, targets, grid_tokens.view(batch, *grid).clone(),
                        probs if return_probs else None, plan.order, k)
        feed, slots = tokens.repeat(rows, 1), (targets + 1).repeat(rows, 1)


def generate(model: ARPG, labels, **kwargs) -> torch.Tensor:
    """Run the sampler to the end; returns the final tokens as a LongTensor [B, N] (raster)."""
    last = deque(sample_steps(model, labels, **kwargs), maxlen=1)
    return last[0].tokens.flatten(1)
