"""Which resolution-expansion variant works better: overlapping windows of the trained grid, or one
pass over the whole 2x grid (with or without NTK-style position interpolation)?

    python -m arpg_core.expansion_eval --small data/emoji/val --large data/emoji128/val

Each held-out image at the model's size is expanded to twice its size (its tokens on the even cells
of the 2x grid, the rest generated) and judged two ways:

- `psnr_vs_truth`: PSNR against the same image rendered at twice the size (build it with
  `python -m arpg_core.data.emoji --out data/emoji128 --size 128`). This rewards a plausible
  upscale; a sampled fill can never reach the tokenizer's own round trip (`vq_roundtrip` row).
- `psnr_to_source`: the expansion shrunk back to the source size against the source. This checks
  that the generated tokens agree with the given ones instead of drawing something new around them.

Every variant sees the same images, class labels and seeds. One JSON line per variant, then the
bicubic and tokenizer-round-trip baselines.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import statistics
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arpg_core.data.folder import ImageFolderDataset
from arpg_core.defaults import default_model_source, default_tokenizer_source
from arpg_core.errors import DataError
from arpg_core.imageio import open_image
from arpg_core.pipeline import Pipeline
from arpg_core.sampling.options import SamplingOptions

VARIANTS = {  # name -> (windowed, rope_interpolation)
    "windowed": (True, False),
    "global-ntk": (False, True),
    "global-plain": (False, False),
}


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64) / 255
    y = np.asarray(b.convert("RGB"), dtype=np.float64) / 255
    return float(-10 * np.log10(max(((x - y) ** 2).mean(), 1e-10)))


def class_of(folder: Path, class_names: list[str]) -> int | None:
    """The model's class for a class folder: its `<index>_` prefix (as the emoji builder and the
    trainers name them) or its exact class name; None (unconditional) otherwise."""
    prefix = re.match(r"(\d+)_", folder.name)
    index = int(prefix.group(1)) if prefix else class_names.index(folder.name) if folder.name in class_names else None
    if index is not None and index >= len(class_names):
        raise DataError(f"folder {folder.name} names class {index}; the model has {len(class_names)} classes")
    return index


def pairs(small: Path, large: Path, limit: int | None, class_names: list[str]) -> list[tuple[Path, Path, int | None]]:
    """(small image, the same image at twice the size, model class), round-robin over the classes."""
    data = ImageFolderDataset(small, 1)
    by_folder: dict[Path, list] = {}
    for f, _ in sorted(data.samples):
        twin = large / f.relative_to(small)
        if twin.is_file():
            by_folder.setdefault(f.parent, []).append((f, twin, class_of(f.parent, class_names)))
    if not by_folder:
        raise DataError(f"no image of {small} has a counterpart under {large}")
    spread = [p for group in itertools.zip_longest(*by_folder.values()) for p in group if p is not None]
    return spread[:limit]


def evaluate(pipe: Pipeline, items, options: SamplingOptions, seed: int = 0) -> list[dict]:
    size = pipe.image_size
    rows = {name: {"truth": [], "source": [], "seconds": [], "steps": []} for name in VARIANTS}
    base = {"bicubic": [], "vq_roundtrip": []}
    names = list(VARIANTS)

    def expand(source, label, seed, name):
        windowed, interpolate = VARIANTS[name]
        opts = dataclasses.replace(options, rope_interpolation=interpolate)
        return deque(pipe.expand(source, label, seed=seed, options=opts, windowed=windowed), maxlen=1)[0]

    if items:  # untimed warm-up of every variant, so no variant alone pays first-call costs
        warm = open_image(items[0][0]).resize((size, size), Image.LANCZOS)
        for name in names:
            expand(warm, items[0][2], seed, name)
    for i, (small_path, large_path, label) in enumerate(items):
        source = open_image(small_path).resize((size, size), Image.LANCZOS)
        truth = open_image(large_path).resize((2 * size, 2 * size), Image.LANCZOS)
        base["bicubic"].append(psnr(source.resize(truth.size, Image.BICUBIC), truth))
        tokens = pipe.encode(truth, (2 * pipe.grid, 2 * pipe.grid))
        base["vq_roundtrip"].append(psnr(pipe.decode(tokens[None])[0], truth))
        for name in names[i % len(names):] + names[:i % len(names)]:  # each variant goes first in turn
            t0 = time.perf_counter()
            last = expand(source, label, seed + i, name)
            rows[name]["seconds"].append(time.perf_counter() - t0)
            rows[name]["steps"].append(last.step)
            out = last.images[0]
            rows[name]["truth"].append(psnr(out, truth))
            rows[name]["source"].append(psnr(out.resize(source.size, Image.BOX), source))
    truth = np.array([rows[name]["truth"] for name in VARIANTS])  # [variants, images]
    wins = np.bincount(truth.argmax(0), minlength=len(VARIANTS))  # a tie goes to the first listed
    results = []
    for k, (name, row) in enumerate(rows.items()):
        results.append({
            "variant": name, "images": len(items), "psnr_vs_truth": round(statistics.mean(row["truth"]), 2),
            "psnr_to_source": round(statistics.mean(row["source"]), 2), "best_on": int(wins[k]),
            "s_per_image": round(statistics.median(row["seconds"]), 2),
            "sampling_steps": round(statistics.mean(row["steps"]), 1),  # windows add up: more work per image
        })
    for name, values in base.items():
        results.append({"variant": name, "images": len(items), "psnr_vs_truth": round(statistics.mean(values), 2)})
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=Path, default=Path("data/emoji/val"), help="held-out images at the model's size")
    p.add_argument("--large", type=Path, default=Path("data/emoji128/val"), help="the same images at twice the size")
    p.add_argument("--model", help="ARPG checkpoint (default: the embedded one)")
    p.add_argument("--tokenizer", help="VQ checkpoint (default: the embedded one)")
    p.add_argument("--limit", type=int, default=27, help="images to use (round-robin over the classes)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.limit < 1 or args.steps < 1:
        p.error("--limit and --steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model or default_model_source(), args.tokenizer or default_tokenizer_source())
    options = SamplingOptions(steps=args.steps, cfg_scale=args.cfg_scale)
    for row in evaluate(pipe, pairs(args.small, args.large, args.limit, pipe.class_names), options, args.seed):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
