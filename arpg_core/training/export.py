"""Copy trained runs into assets/ as the embedded model, with its sample sheet.

    python -m arpg_core.training.export --vq runs/vq-emoji/vq.safetensors \
        --arpg runs/arpg-emoji/arpg.safetensors --assets assets

Writes vq_emoji.safetensors (float32: its codes must match the ones the generator learned),
arpg_emoji.safetensors (int8 weights with per-row scales by default, `--storage bf16` for
bfloat16; class names in the metadata) and samples_emoji.png (one row per class, 64 steps,
CFG 4), and checks each file stays under 9.5 MB (a Space takes files below 10 MB without LFS)
and both under 20 MB. int8 halves the generator's file for a held-out loss within 0.001 nats of
bfloat16's (measured on the emoji model).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from arpg_core.errors import ARPGError, CheckpointError, ConfigError
from arpg_core.loading import load_model, load_tokenizer, read_metadata, resolve_source, save_checkpoint
from arpg_core.pipeline import Pipeline
from arpg_core.training.train_arpg import sample_sheet

MAX_FILE_BYTES = 9_500_000  # 9.5 MB, decimal as every size we print: under a Space's 10 MB by either reading
MAX_TOTAL_BYTES = 20_000_000  # both files together


STORAGE = {"int8": torch.int8, "bf16": torch.bfloat16}


def export(vq_source: str, arpg_source: str, assets: Path, per_class: int = 8,
           storage: str = "int8") -> dict[str, int]:
    """Everything is written and checked in a scratch folder first; assets/ changes only when the pair
    loads as a pipeline and every file is within budget, so a failed export leaves the shipped model."""
    if storage not in STORAGE:
        raise ConfigError(f"unknown storage {storage!r}; choose one of {sorted(STORAGE)}")
    tokenizer = load_tokenizer(vq_source)
    model = load_model(arpg_source)
    if not model.class_names:
        raise CheckpointError(f"{arpg_source} carries no class names; export it from train_arpg")
    Pipeline(model, tokenizer)  # vocab vs codebook, class names: the app would refuse the pair at start-up
    trained_on, digest = read_metadata(resolve_source(arpg_source)).get("tokenizer_codes"), tokenizer.codes_digest()
    if trained_on is not None and trained_on != digest:
        raise CheckpointError(f"{arpg_source} learned the codes of another tokenizer (codes digest {trained_on}, "
                              f"{vq_source} has {digest}): the pair would draw noise. Export it "
                              "with the tokenizer its train_arpg run used (or a --decoder-only fine-tune of it)")
    if model.config.grid_size != tokenizer.config.grid_size:
        raise CheckpointError(f"the model's grid is {model.config.grid_size} but the tokenizer makes "
                              f"{tokenizer.config.grid_size}x{tokenizer.config.grid_size} tokens")
    assets.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=assets, prefix=".export-") as scratch:
        tmp = Path(scratch)
        files = {
            "vq_emoji.safetensors": save_checkpoint(tokenizer, tmp / "vq_emoji.safetensors"),
            "arpg_emoji.safetensors": save_checkpoint(model, tmp / "arpg_emoji.safetensors", dtype=STORAGE[storage],
                                                      extra_metadata={"tokenizer_codes": digest}),
        }
        sizes = {name: path.stat().st_size for name, path in files.items()}
        too_big = {n: s for n, s in sizes.items() if s > MAX_FILE_BYTES}
        if too_big:
            raise CheckpointError(f"files over {MAX_FILE_BYTES / 1e6:g} MB: {too_big}; {assets} is unchanged")
        total = sum(sizes.values())
        if total > MAX_TOTAL_BYTES:
            raise CheckpointError(f"the files add up to {total / 1e6:.2f} MB, over "
                                  f"{MAX_TOTAL_BYTES / 1e6:g} MB; {assets} is unchanged")
        model = load_model(files["arpg_emoji.safetensors"])  # the sheet shows the weights as shipped
        files["samples_emoji.png"] = sample_sheet(model, tokenizer, tmp / "samples_emoji.png", per_class=per_class)
        for name, path in files.items():
            os.replace(path, assets / name)
    return sizes


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vq", required=True)
    p.add_argument("--arpg", required=True)
    p.add_argument("--assets", type=Path, default=Path("assets"))
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--storage", choices=sorted(STORAGE), default="int8",
                   help="how the generator's weights are stored (default int8: half the size of bf16)")
    args = p.parse_args(argv)
    if args.per_class < 1:
        raise SystemExit(f"export: error: --per-class must be at least 1 (got {args.per_class})")
    try:
        sizes = export(args.vq, args.arpg, args.assets, args.per_class, args.storage)
    except ARPGError as exc:
        raise SystemExit(f"export: error: {exc}") from None
    except OSError as exc:  # an --assets that cannot be written
        raise SystemExit(f"export: error: {exc.strerror or exc}: {exc.filename or ''}") from None
    for name, size in sizes.items():
        print(f"{name}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
