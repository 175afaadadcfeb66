"""Measure an ARPG model on an image folder: its held-out loss (nats per token, conditional on the
class, over random orders), overall and per class, beside a unigram model of the training codes.

    python -m arpg_core.training.eval_arpg --model assets/arpg_emoji.safetensors \
        --tokenizer assets/vq_emoji.safetensors --data data/emoji/val --train data/emoji/train

One JSON object on stdout. `--recognise N` adds how recognisable the model's images are: a small
classifier trained on the --train images judges N samples per class (drawn as the sample sheet is)
beside the held-out images, and a colour-blind one judges the same in grey (under "grey"); see
`arpg_core.training.recognise`.

The images are encoded with --tokenizer, the one whose codes the model learned (a decoder-only
fine-tune encodes the same). Classes are numbered as the --train folder's (sorted sub-folders, as
`train_arpg` does), so a class missing from --data shifts nothing. Without --train the unigram
model is fitted on the --data codes themselves, which flatters it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from arpg_core.data.folder import ImageFolderDataset
from arpg_core.errors import ARPGError, ConfigError
from arpg_core.loading import load_model, load_tokenizer
from arpg_core.models.arpg import ARPG
from arpg_core.tokenizer.vq import VQModel
from arpg_core.training.objective import heldout_loss, unigram_loss
from arpg_core.training.recognise import recognition
from arpg_core.training.train_arpg import tokenize_folder


@torch.no_grad()
def evaluate(model: ARPG, tokenizer: VQModel, data: Path, train: Path | None = None, orders: int = 3,
             recognise: int = 0, classifier: Path | None = None, grey: bool = True) -> dict:
    """Held-out loss averaged over `orders` fixed random orders (seeds 0..orders-1), per class too;
    with `recognise` (needs `train`), the recognition shares of that many samples per class, by the
    colour judge and, unless `grey` is False, the colour-blind one too (a second classifier to train)."""
    size = tokenizer.config.image_size
    train_set = ImageFolderDataset(train, size) if train else None
    heldout = ImageFolderDataset(data, size, classes=train_set.class_names if train_set else None)
    train_codes = tokenize_folder(tokenizer, train_set, flips=False) if train_set else None
    codes, labels = tokenize_folder(tokenizer, heldout, flips=False)
    names = heldout.class_names
    if len(names) != model.config.num_classes:
        raise ConfigError(f"{data} has {len(names)} classes; the model was trained on {model.config.num_classes}")
    reference = codes if train_codes is None else train_codes[0]
    readable = list(getattr(model, "class_names", None) or names)

    def loss(idx: torch.Tensor) -> float:
        return sum(heldout_loss(model, codes[idx], labels[idx], seed=s) for s in range(orders)) / orders

    per_class = {readable[c]: round(loss((labels == c).nonzero().flatten()), 4)
                 for c in range(len(names)) if (labels == c).any()}
    result = {
        "folder": str(data),
        "images": len(codes),
        "loss_nats": round(loss(torch.arange(len(codes))), 4),
        "unigram_nats": round(unigram_loss(reference, codes, tokenizer.config.codebook_size), 4),
        "unigram_from": str(train) if train else f"{data} (itself)",
        "orders": orders,
        "loss_nats_per_class": per_class,
    }
    if recognise:
        result["recognised"] = recognition(model, tokenizer, train_codes, train_set.fingerprint(), (codes, labels),
                                           recognise, readable, classifier, grey=grey)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="ARPG checkpoint: anything load_model takes")
    p.add_argument("--tokenizer", required=True, help="the VQ whose codes the model learned")
    p.add_argument("--data", type=Path, required=True, help="held-out image folder")
    p.add_argument("--train", type=Path, help="training folder: class numbering and the unigram model")
    p.add_argument("--orders", type=int, default=3, help="random orders to average over (default 3)")
    p.add_argument("--recognise", type=int, default=0, metavar="N",
                   help="also classify N samples per class and the held-out images (needs --train)")
    p.add_argument("--classifier", type=Path, help="where the recognition classifier is kept between runs "
                   "(the grey one beside it: X.pt -> X-grey.pt)")
    p.add_argument("--no-grey", action="store_true",
                   help="with --recognise, the colour judge only (skips training the grey one: a few minutes)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.orders < 1:
        raise SystemExit("eval_arpg: error: --orders must be at least 1")
    if args.recognise < 0 or (args.recognise and not args.train):
        raise SystemExit("eval_arpg: error: --recognise takes a count of samples per class, and --train")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("eval_arpg: error: --threads must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model).float().eval()
        tokenizer = load_tokenizer(args.tokenizer).float().eval()
        with contextlib.redirect_stdout(sys.stderr):  # notes (unreadable files, training): stdout is the JSON's
            result = evaluate(model, tokenizer, args.data, args.train, args.orders, args.recognise, args.classifier,
                              grey=not args.no_grey)
    except ARPGError as exc:
        raise SystemExit(f"eval_arpg: error: {exc}") from None
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
