"""How recognisable a class-conditional model's images are, as a number rather than a look at a sheet.

A small convolutional classifier is trained on the tokenizer's reconstructions of the training
images (so it knows the blur of decoded codes and judges content, not sharpness). It then classifies
two sets, per class: the held-out images, reconstructed the same way (its ceiling: some classes look
alike), and images generated as the sample sheet draws them (same seeds, steps and guidance). The
score is the share taken for the class that was asked for; `eval_arpg --recognise N` reports both.

A second, colour-blind judge does the same on grey images (BT.601 luma only). The colour classifier
can be pleased by a class's typical colours without any of its shapes (at a strong CFG the weak
classes turn into one stereotyped blob of their colour and the share goes up); the grey one cannot
be pleased by hue, only by outline, layout and brightness (so a stereotyped pale or dark blob can
still please it).

The classifier is cached at a path of the caller's choosing (the grey one beside it, x.pt ->
x-grey.pt), keyed by the training images, the tokenizer's weights and the view, so comparing
checkpoints trains each once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from arpg_core.errors import CheckpointError, ConfigError
from arpg_core.models.arpg import ARPG
from arpg_core.tokenizer.vq import VQModel
from arpg_core.training import common
from arpg_core.training.train_arpg import class_samples, shrink_and_shift

PX = 32  # the classifier sees images at this size: the classes differ in shape and colour, not detail
CACHE_VERSION = 2  # 2: one thread, seeded dropout (version 1 depended on both the thread count and the RNG)
VIEWS = ("colour", "grey")  # what a classifier is shown: the images, or their luminance alone
STEPS = 1500  # classifier training steps of 64 images: a few minutes on one thread


class Classifier(nn.Module):
    """Five 3x3 convolutions (two of them stride 2), global average pool, linear head; ~0.3M weights.
    view "grey" makes it colour-blind: it sees every image as its luminance, in all three channels."""

    def __init__(self, num_classes: int, width: int = 32, view: str = "colour"):
        super().__init__()
        if view not in VIEWS:
            raise ConfigError(f"view must be one of {VIEWS}, not {view!r}")
        layers, c_in = [], 3
        for c_out, stride in ((width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2), (4 * width, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c_in, num_classes))
        self.num_classes, self.width, self.view = num_classes, width, view

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1], any size -> logits [B, num_classes]."""
        if images.shape[-2:] != (PX, PX):
            images = F.interpolate(images, size=(PX, PX), mode="area")
        if self.view == "grey":
            images = greyscale(images)
        return self.head(self.features(images))


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> the same shape, each pixel's luminance in all three channels (white stays white)."""
    luma = torch.einsum("bchw,c->bhw", images, images.new_tensor(LUMA))
    return luma[:, None].expand_as(images)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread: a float sum split over N threads is added up in another order, and
    over many training steps those last-bit differences grow. On one thread (and with its dropout
    seeded) the same images and seed give the same weights, whatever --threads says."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def reconstruct(tokenizer: VQModel, codes: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images as the tokenizer gives them back, from their codes [M, N] (raster order)."""
    g = tokenizer.config.grid_size
    return torch.cat([tokenizer.decode(chunk.view(-1, g, g)).clamp(-1, 1) for chunk in codes.split(batch)])


@torch.enable_grad()  # callers may be under no_grad (an evaluation)
def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = STEPS,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, view: str = "colour") -> Classifier:
    """Class-balanced batches, random mirrors and shrink-and-shift copies (the augmentation of the
    ARPG training: the layouts a generator may produce), AdamW with a cosine decay."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded weights and dropout, the caller's global RNG untouched
        torch.manual_seed(seed)
        model = Classifier(num_classes, view=view)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        batches = common.balanced_batches(common.class_balanced_weights(labels, 1.0), batch_size, gen)
        model.train()
        for step in range(steps):
            common.set_lr(optimizer, common.lr_at(step, lr, warmup=0, total=steps, min_ratio=0.0))
            idx = next(batches)
            x = images[idx]
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            moved = torch.rand(len(x), generator=gen) < 0.5
            if moved.any():
                x[moved] = shrink_and_shift(x[moved], gen)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(classifier: Classifier, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([classifier(chunk).argmax(-1) for chunk in images.split(batch)])


def recognised(predicted: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """Per class: the share of its images taken for it, and the class most often taken instead."""
    out = {}
    for c, name in enumerate(names):
        mine = predicted[labels == c]
        if not len(mine):
            continue
        wrong = mine[mine != c]
        entry = {"share": round((mine == c).float().mean().item(), 3), "images": len(mine)}
        if len(wrong):
            entry["else_mostly"] = names[int(wrong.bincount(minlength=len(names)).argmax())]
        out[name] = entry
    out["all"] = {"share": round((predicted == labels).float().mean().item(), 3), "images": len(labels)}
    return out


def cached_classifier(tokenizer: VQModel, train: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                      images_key: str, path: Path | None, log=print, view: str = "colour") -> Classifier:
    """The classifier for the training images (their codes and labels, `images_key` naming them, e.g.
    the folder's fingerprint), this tokenizer and view: loaded from `path` (for a view other than
    colour, from the file beside it that `view_path` names) when it was trained on the same, else
    trained on their reconstructions (a few minutes, on one thread) and saved there."""
    key = f"v{CACHE_VERSION}|{images_key}|{tokenizer.weights_digest()}"
    if view != "colour":  # the colour judge keeps the key it always had, so its caches stay valid
        key += f"|{view}"
    path = view_path(path, view)
    if path is not None and path.exists():
        state = _classifier_cache(path)
        if state.get("key") == key:
            model = Classifier(state["num_classes"], state["width"], view)
            model.load_state_dict(state["weights"])
            return model.eval()
        elif state:
            log(f"{path} was trained on other images or another tokenizer, or is another view's "
                "classifier: training it again")
    codes, labels = train
    judge = "recognition classifier" if view == "colour" else f"{view} recognition classifier"
    log(f"training the {judge} on {len(codes)} reconstructed images (one thread) ...")
    with one_thread():  # the same classifier whatever --threads says (a few minutes on one core)
        model = train_classifier(reconstruct(tokenizer, codes), labels, num_classes, steps=STEPS, view=view)
    if path is not None:
        common.save_checkpoint(path, key=key, num_classes=model.num_classes, width=model.width,
                               weights=model.state_dict())
    return model


CACHE_FIELDS = ("key", "num_classes", "width", "weights")


def _classifier_cache(path: Path) -> dict:
    """What `path` holds, when it is a classifier cache; refused (ConfigError) when it is anything else,
    before minutes of training end by overwriting it: a checkpoint, the shipped model, a folder."""
    refuse = f"--classifier {path} is not a recognition-classifier cache; name a new file (e.g. runs/classifier.pt)"
    if not path.is_file():
        raise ConfigError(refuse)
    try:
        state = common.load_checkpoint(path)
    except CheckpointError:
        raise ConfigError(refuse) from None
    if not isinstance(state, dict) or not all(field in state for field in CACHE_FIELDS):
        raise ConfigError(refuse)
    return state


def view_path(path: Path | None, view: str) -> Path | None:
    """Where the classifier of a view is cached, beside the colour one's `path` (x.pt -> x-grey.pt)."""
    if path is None or view == "colour":
        return path
    return path.with_name(f"{path.stem}-{view}{path.suffix}")


def recognition(model: ARPG, tokenizer: VQModel, train: tuple[torch.Tensor, torch.Tensor], train_key: str,
                heldout: tuple[torch.Tensor, torch.Tensor], per_class: int, names: list[str],
                classifier_path: Path | None = None, log=print, grey: bool = True) -> dict:
    """train, heldout: (codes [M, N], labels [M]) of the images, as the loss evaluation encoded them.
    -> {"heldout": per class, "samples": per class, "grey": {"heldout": ..., "samples": ...}}: shares
    taken for the class asked for, by the colour judge and (under "grey", unless `grey` is False) the
    colour-blind one, which judge the same samples. The grey judge is cached beside `classifier_path`."""
    codes, labels = heldout
    real = reconstruct(tokenizer, codes)
    rows = len(names)  # the model's classes, or for a model of subclasses its groups (the sheet's rows)
    made = torch.cat([class_samples(model, tokenizer, c, per_class) for c in range(rows)])
    asked = torch.arange(rows).repeat_interleave(per_class)
    judged = {}
    for view in VIEWS if grey else ("colour",):
        classifier = cached_classifier(tokenizer, train, rows, train_key, classifier_path, log, view=view)
        judged[view] = {"heldout": recognised(predict(classifier, real), labels, names),
                        "samples": recognised(predict(classifier, made), asked, names)}
    colour = judged.pop("colour")
    return {**colour, **judged, "samples_per_class": per_class}
