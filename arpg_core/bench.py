"""Side-by-side benchmark: parallel (ARPG) vs raster one-token-per-step decoding on equal weights,
and the KV cache bytes of ARPG against a raster model holding all n_layer layers.

    python -m arpg_core.bench [--quick] [--device cpu|cuda] [--dtype float32|bfloat16]

Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from arpg_core.defaults import EMBEDDED_MODEL, EMBEDDED_TOKENIZER
from arpg_core.loading import build_model, load_model, load_tokenizer
from arpg_core.models.arpg import ARPG, ARPGConfig
from arpg_core.sampling.plan import tokens_per_step
from arpg_core.sampling.sampler import generate
from arpg_core.training.objective import init_arpg_weights


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _generate_once(model: ARPG, batch: int, seed: int, **kwargs) -> float:
    device = model.embeddings.weight.device
    labels = torch.arange(batch) % model.config.num_classes
    gens = [torch.Generator().manual_seed(1000 * seed + i) for i in range(batch)]
    _sync(device)
    t0 = time.perf_counter()
    generate(model, labels, generator=gens, **kwargs)
    _sync(device)
    return time.perf_counter() - t0


def time_side_by_side(model: ARPG, batch: int, repeats: int, sides: dict[str, dict]) -> dict[str, float]:
    """Median seconds per image of each side. One warm-up call each, then the sides take turns, so a
    load change on the machine (another job, clock boost) falls on both alike."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeats + 1):
        for name, kwargs in (sides.items() if r % 2 == 0 else reversed(sides.items())):
            elapsed = _generate_once(model, batch, r, **kwargs)
            if r:
                times[name].append(elapsed)
    return {name: statistics.median(t) / batch for name, t in times.items()}


def speed_case(name: str, model: ARPG, batch: int, steps: int, repeats: int, cfg_scale: float) -> dict:
    n = model.config.seq_len
    t = time_side_by_side(model, batch, repeats, {
        "parallel": dict(steps=steps, cfg_scale=cfg_scale, order="random"),
        "raster": dict(steps=n, cfg_scale=cfg_scale, order="raster"),
    })
    return {"case": name, "batch": batch, "steps": steps, "raster_steps": n, "repeats": repeats,
            "parallel_s_per_image": round(t["parallel"], 5), "raster_s_per_image": round(t["raster"], 5),
            "speedup": round(t["raster"] / t["parallel"], 2)}


def cache_case(name: str, config: ARPGConfig, steps: int, dtype: torch.dtype, batch: int = 1) -> dict:
    """Bytes of the caches one call allocates, against a raster model caching every layer."""
    with torch.device("meta"):
        model = ARPG(config)
    n = config.seq_len
    counts = tokens_per_step(n, steps, "arccos")
    rope = torch.zeros(n + 1, config.head_dim // 2, 2)
    cache = model.new_cache(2 * batch, 1 + sum(counts[:-1]), rope, dtype=dtype)  # CFG doubles the batch
    ours = sum(t.numel() * t.element_size() for c in [*cache.content, cache.shared] for t in (c.k, c.v))
    per_token_layer = 2 * 2 * batch * config.dim * torch.finfo(dtype).bits // 8  # K and V, CFG rows
    # A raster model caches the class token and every token but the last (nothing reads the last),
    # as our cache stops before the last step.
    raster = config.n_layer * n * per_token_layer
    return {"case": name, "batch": batch, "steps": steps, "kv_cache_bytes": ours,
            "raster_kv_cache_bytes": raster, "kv_ratio": round(ours / raster, 3)}


def embedded_case(device: str, repeats: int, dtype: torch.dtype = torch.float32) -> dict | None:
    """The shipped emoji model: load time of both files, and one image end to end (64 steps, CFG)."""
    if not (EMBEDDED_MODEL.exists() and EMBEDDED_TOKENIZER.exists()):
        return None
    dev = torch.device(device)
    t0 = time.perf_counter()
    model = load_model(EMBEDDED_MODEL, device=dev, dtype=dtype)
    tokenizer = load_tokenizer(EMBEDDED_TOKENIZER, device=dev)
    _sync(dev)
    load_s = time.perf_counter() - t0
    g = model.config.grid_size
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        tokens = generate(model, [r % model.config.num_classes], steps=64, cfg_scale=4.0, generator=[
            torch.Generator().manual_seed(r)])
        with torch.inference_mode():
            tokenizer.decode(tokens.view(1, g, g))
        _sync(dev)
        if r:
            times.append(time.perf_counter() - t0)
    return {"case": f"embedded/{device}", "batch": 1, "steps": 64, "cfg_scale": 4.0, "dtype": str(dtype),
            "s_per_image_with_decode": round(statistics.median(times), 4), "load_s": round(load_s, 3)}


def run(quick: bool, device: str, dtype: torch.dtype) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    dev = torch.device(device)
    small = build_model("ARPG-small")
    init_arpg_weights(small)
    torch.nn.init.normal_(small.head.weight, std=0.02)  # non-degenerate logits
    small = small.to(dev, dtype).eval()
    repeats = 3 if quick else 7  # odd: the median is one measured call
    for batch in (1, 16):
        rows.append(speed_case(f"ARPG-small/{device}", small, batch, 64, repeats, cfg_scale=4.0))
    if dev.type == "cuda":
        large = build_model("ARPG-L", device=dev).to(dtype).eval()
        for batch in (1, 16):
            rows.append(speed_case(f"ARPG-L/{device}", large, batch, 64, repeats, cfg_scale=4.0))
    embedded = embedded_case(device, repeats, dtype)
    if embedded:
        rows.append(embedded)
    for name in ("ARPG-L", "ARPG-XL", "ARPG-XXL"):
        rows.append(cache_case(name, ARPGConfig.from_name(name), 64, torch.bfloat16))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="arpg bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under two minutes on a laptop CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    from arpg_core.cli import CLIError, check_device

    try:
        check_device(args.device)
    except CLIError as exc:  # --device cuda on a CPU-only torch: a usage message, not a traceback
        parser.error(str(exc))
    for row in run(args.quick, args.device, getattr(torch, args.dtype)):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
