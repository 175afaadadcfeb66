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

from arpg_core.classes import group_index
from arpg_core.data.folder import ImageFolderDataset
from arpg_core.errors import ARPGError, ConfigError
from arpg_core.loading import load_model, load_tokenizer
from arpg_core.models.arpg import ARPG
from arpg_core.tokenizer.vq import VQModel
from arpg_core.training.objective import heldout_loss, random_orders, unigram_loss
from arpg_core.training.recognise import recognition
from arpg_core.training.train_arpg import sheet_rows, tokenize_folder


@torch.no_grad()
def evaluate(model: ARPG, tokenizer: VQModel, data: Path, train: Path | None = None, orders: int = 3,
             recognise: int = 0, classifier: Path | None = None, grey: bool = True) -> dict:
    """Held-out loss averaged over `orders` fixed random orders (seeds 0..orders-1), per class too;
    with `recognise` (needs `train`), the recognition shares of that many samples per class, by the
    colour judge and, unless `grey` is False, the colour-blind one too (a second classifier to train)."""
    size = tokenizer.config.image_size
    grouped = bool(getattr(model, "class_groups", None))  # subclasses: the folders' sub-folders are the classes
    train_set = ImageFolderDataset(train, size, subclasses=grouped) if train else None
    heldout = ImageFolderDataset(data, size, classes=train_set.class_names if train_set else None, subclasses=grouped)
    train_codes = tokenize_folder(tokenizer, train_set, flips=False) if train_set else None
    codes, labels = tokenize_folder(tokenizer, heldout, flips=False)
    names = heldout.class_names
    if len(names) != model.config.num_classes:
        raise ConfigError(f"{data} has {len(names)} classes; the model was trained on {model.config.num_classes}")
    reference = codes if train_codes is None else train_codes[0]
    readable = list(getattr(model, "class_names", None) or names)
    # Per class, or for a model of subclasses per group (the classes its sample sheet shows and a user asks for).
    rows = sheet_rows(model) if grouped else readable
    row_of = torch.tensor(group_index(model.class_groups)) if grouped else torch.arange(len(names))

    def loss(idx: torch.Tensor) -> float:
        return sum(heldout_loss(model, codes[idx], labels[idx], seed=s) for s in range(orders)) / orders

    per_row = {rows[r]: round(loss((row_of[labels] == r).nonzero().flatten()), 4)
               for r in range(len(rows)) if (row_of[labels] == r).any()}
    result = {
        "folder": str(data),
        "images": len(codes),
        "loss_nats": round(loss(torch.arange(len(codes))), 4),
        "unigram_nats": round(unigram_loss(reference, codes, tokenizer.config.codebook_size), 4),
        "unigram_from": str(train) if train else f"{data} (itself)",
        "orders": orders,
        "loss_nats_per_class": per_row,
    }
    if grouped:
        result["loss_conditions_on"] = "subclass"
        if train_codes is not None:  # the fair comparison with a model of the groups: told the group only
            prior = torch.bincount(train_codes[1], minlength=len(names)).double()
            marginal = group_marginal_nats(model, codes, labels, row_of, prior, orders)
            result["loss_nats_given_group"] = round(float(marginal.mean()), 4)
            result["loss_nats_given_group_per_class"] = {
                rows[r]: round(float(marginal[row_of[labels] == r].mean()), 4)
                for r in range(len(rows)) if (row_of[labels] == r).any()}
    if recognise:
        judged = (train_codes[0], row_of[train_codes[1]])  # the judges tell the groups (the rows) apart
        result["recognised"] = recognition(model, tokenizer, judged, train_set.fingerprint(), (codes, row_of[labels]),
                                           recognise, rows, classifier, grey=grey)
    return result


@torch.no_grad()
def image_nats(model: ARPG, tokens: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Each image's summed loss in nats [B] given its label and its order (one per row)."""
    logits = model(tokens, labels, orders)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens.gather(1, orders),
                                             reduction="none").sum(1)


@torch.no_grad()
def group_marginal_nats(model: ARPG, codes: torch.Tensor, labels: torch.Tensor, group_of: torch.Tensor,
                        prior: torch.Tensor, orders: int, batch: int = 64) -> torch.Tensor:
    """Nats per token of each image [M] told only its group: -log sum_s p(s | group) p(x | s) over the
    group's subclasses s (p(s | group) their share of the training images), one fixed random order per
    image and seed (the same for every s), averaged over `orders` seeds."""
    m, n = codes.shape
    rows, subs = [], []
    for i in range(m):  # every (image, subclass of its group) pair
        members = (group_of == group_of[labels[i]]).nonzero().flatten()
        rows += [i] * len(members)
        subs += members.tolist()
    rows, subs = torch.tensor(rows), torch.tensor(subs)
    share = prior / prior.new_zeros(int(group_of.max()) + 1).index_add(0, group_of, prior)[group_of]
    log_share = share[subs].clamp(min=1e-12).log()  # log p(s | g) of each pair
    total = torch.zeros(m, dtype=torch.float64)
    for seed in range(orders):
        order = random_orders(m, n, generator=torch.Generator().manual_seed(seed))
        nats = torch.cat([image_nats(model, codes[rows[j:j + batch]], subs[j:j + batch], order[rows[j:j + batch]])
                          for j in range(0, len(rows), batch)]).double()
        score = log_share - nats  # log p(s | g) + log p(x | s)
        best = torch.full((m,), -float("inf"), dtype=torch.float64).scatter_reduce(0, rows, score, "amax")
        summed = torch.zeros(m, dtype=torch.float64).index_add(0, rows, (score - best[rows]).exp())
        total += -(best + summed.log()) / n
    return total / orders


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
