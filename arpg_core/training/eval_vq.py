"""Measure a VQ tokenizer on image folders: PSNR (mean over images, overall and per class), how many
codes it uses and the perplexity of its code histogram.

    python -m arpg_core.training.eval_vq --tokenizer assets/vq_emoji.safetensors \
        --data data/emoji/val data/emoji/train

One JSON object per folder on stdout. PSNR is on [0, 1] pixels after clamping the reconstruction,
the same number `train_vq` logs as `val_psnr`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from arpg_core.data.folder import ImageFolderDataset
from arpg_core.errors import ARPGError
from arpg_core.loading import load_tokenizer
from arpg_core.tokenizer.vq import VQModel


def psnr_per_image(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[B] PSNR in dB of reconstructions against images, both in [-1, 1]."""
    mse = ((recon.float().clamp(-1, 1) - images.float()) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return -10 * torch.log10(mse)


def code_stats(codes: torch.Tensor, codebook_size: int) -> dict:
    """Distinct codes used, their share of the codebook, and exp(entropy) of the code histogram."""
    p = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = p[p > 0] / p.sum()
    used = len(p)
    return {"codes_used": used, "usage": round(used / codebook_size, 4),
            "perplexity": round(torch.exp(-(p * p.log()).sum()).item(), 1)}


@torch.no_grad()
def evaluate_folder(tokenizer: VQModel, folder: Path, batch: int = 64) -> dict:
    data = ImageFolderDataset(folder, tokenizer.config.image_size)
    images, labels = data.load_all()
    codes, psnrs = [], []
    for chunk in images.split(batch):
        c = tokenizer.encode(chunk)
        codes.append(c)
        psnrs.append(psnr_per_image(tokenizer.decode(c), chunk))
    psnrs, labels = torch.cat(psnrs), torch.as_tensor(labels)
    per_class = {name: round(psnrs[labels == i].mean().item(), 2)
                 for i, name in enumerate(data.class_names) if (labels == i).any()}
    return {"folder": str(folder), "images": len(images), "psnr_db": round(psnrs.mean().item(), 2),
            **code_stats(torch.cat(codes), tokenizer.config.codebook_size), "psnr_db_per_class": per_class}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="VQ checkpoint: anything load_tokenizer takes")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="image folders (class sub-folders or flat)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        raise SystemExit("eval_vq: error: --batch-size and --threads must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    try:
        tokenizer = load_tokenizer(args.tokenizer).float().eval()
        for folder in args.data:
            results.append(evaluate_folder(tokenizer, folder, args.batch_size))
            print(json.dumps(results[-1]), flush=True)
    except ARPGError as exc:  # a missing folder or checkpoint: a message, not a traceback
        raise SystemExit(f"eval_vq: error: {exc}") from None
    return results


if __name__ == "__main__":
    main()
