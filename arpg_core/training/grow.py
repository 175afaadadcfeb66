"""Deepen a trained ARPG without changing what it computes, to go on training a larger model from it.

    python -m arpg_core.training.grow --model assets/arpg_emoji.safetensors --layers 22 \
        --out runs/grown/arpg.safetensors
    python -m arpg_core.training.train_arpg --init runs/grown/arpg.safetensors ...

Each half of the stack (content layers, query layers) gets the same number of new blocks, placed after
the trained ones of that half. A new block's attention output projection and its feed-forward output
projection start at zero, so the block adds nothing to the residual stream: the grown model gives the
same logits as the one it came from, and training starts from where the smaller model stopped instead
of from scratch. The other weights of a new block are drawn as train_arpg draws a fresh model's
(normal, std 0.02); the zero output projections still pass gradients to them once they move.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from arpg_core.errors import ARPGError, ConfigError
from arpg_core.loading import load_model, read_metadata, resolve_source, save_checkpoint
from arpg_core.models.arpg import ARPG
from arpg_core.training.objective import init_arpg_weights


def grow(model: ARPG, n_layer: int, seed: int = 0) -> ARPG:
    """A float32 copy of `model` with `n_layer` layers (even, and at least the current count)."""
    old = model.config
    if n_layer < old.n_layer:
        raise ConfigError(f"--layers {n_layer} is fewer than the model's {old.n_layer}: growing only adds layers")
    cfg = dataclasses.replace(old, n_layer=n_layer)  # validates evenness
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = ARPG(cfg)
        init_arpg_weights(grown)  # what a fresh train_arpg run starts from; trained weights overwrite it
    missing, unexpected = grown.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=False)
    if unexpected:  # every trained weight has a place in the deeper model
        raise ConfigError(f"weights with no place in the grown model: {unexpected[:3]}")
    old_half = old.n_layer // 2
    for blocks in (grown.layers.self_dec, grown.layers.cross_dec):
        for block in list(blocks)[old_half:]:
            torch.nn.init.zeros_(block.attn.proj.weight)
            torch.nn.init.zeros_(block.ffn.w2.weight)
    new_names = {f"layers.{half}.{i}." for half in ("self_dec", "cross_dec") for i in range(old_half, n_layer // 2)}
    stray = [k for k in missing if not any(k.startswith(p) for p in new_names)]
    if stray:
        raise ConfigError(f"the grown model lacks trained weights for {stray[:3]}")
    for kept in ("class_names", "class_groups", "class_counts"):
        setattr(grown, kept, getattr(model, kept, None))
    return grown.eval().requires_grad_(False)


def split_classes(model: ARPG, parents: list[int]) -> ARPG:
    """A float32 copy of `model` whose class k starts as class parents[k] of `model`: the same logits
    for it, so that training on finer classes (sub-folders, `train_arpg --subclasses`) starts from a
    model trained on their groups. The null class (for CFG) keeps its embedding."""
    old = model.config
    if not parents or min(parents) < 0 or max(parents) >= old.num_classes:
        raise ConfigError(f"each new class needs a parent among the model's {old.num_classes} classes")
    cfg = dataclasses.replace(old, num_classes=len(parents))
    split = ARPG(cfg)
    sd = {k: v.float() for k, v in model.state_dict().items()}
    table, v = sd["embeddings.weight"], old.vocab_size
    rows = [table[: v + 1], table[[v + 1 + p for p in parents]], table[old.null_class_token:]]
    sd["embeddings.weight"] = torch.cat(rows)  # codes and mask, the classes, the null and unused rows
    split.load_state_dict(sd)
    split.class_names = None  # the caller names the new classes
    return split.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported ARPG weights (path or hf://)")
    p.add_argument("--layers", type=int, required=True, help="layer count of the grown model (even)")
    p.add_argument("--out", type=Path, required=True, help="where to write the grown weights (.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        model = load_model(args.model)
        grown = grow(model, args.layers, args.seed)
        codes = read_metadata(resolve_source(args.model)).get("tokenizer_codes")
        save_checkpoint(grown, args.out, extra_metadata={"tokenizer_codes": codes} if codes else None)
    except ARPGError as exc:
        raise SystemExit(f"grow: error: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"grow: error: cannot write {args.out}: {exc.strerror or exc}") from None
    params = sum(t.numel() for t in grown.parameters())
    print(f"{args.out}: {model.config.n_layer} -> {args.layers} layers, {params / 1e6:.2f}M parameters "
          f"(float32, {args.out.stat().st_size / 1e6:.2f} MB; export writes int8, about a quarter)")


if __name__ == "__main__":
    main()
