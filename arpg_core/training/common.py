"""Generic training helpers shared by the tokenizer and ARPG trainers."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from arpg_core.errors import ARPGError, CheckpointError, DataError

CHECKPOINT_NAME = "last.pt"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay only on matrices/conv kernels, not on norms, biases or embeddings."""
    no_decay_types = (nn.Embedding, nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)
    skip = {id(p) for m in model.modules() if isinstance(m, no_decay_types) for p in m.parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95)):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to base_lr, then cosine decay to base_lr * min_ratio at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def decay_at(self, step: int | None) -> float:
        """The decay ramps up over the first steps ((1 + step) / (10 + step)), so a young run's average
        is not mostly its random initialisation (0.999 alone keeps 37% of it after 1,000 steps)."""
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        keep = self.decay_at(step)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1 - keep)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def module(self, model: nn.Module) -> nn.Module:
        """A copy of `model` holding the averaged weights."""
        averaged = copy.deepcopy(model)
        self.copy_to(averaged)
        return averaged

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, **state: Any) -> None:
    """Atomic write: a crash mid-save never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Our own training checkpoints (they hold numpy/python RNG states, hence weights_only=False)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from exc


def training_state(model, ema: EMA | None, optimizer, step: int, config: dict, **extra: Any) -> dict:
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": rng_state(),
        "config": config,
        **extra,
    }


def restore_training_state(state: dict, model, ema: EMA | None, optimizer) -> int:
    """Load what `training_state` saved; returns the step to continue from."""
    model.load_state_dict(state["model"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["step"])


def apply_settings(ema: EMA | None, optimizer, ema_decay: float, weight_decay: float) -> None:
    """After a resume, the command line's EMA decay and weight decay replace the saved ones (group 0
    of `param_groups` is the decayed one), so changing them between runs takes effect."""
    if ema is not None:
        ema.decay = ema_decay
    optimizer.param_groups[0]["weight_decay"] = weight_decay


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag so the loop can save a checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); None where that cannot be read
    (not Linux). Without it bf16 autocast is emulated: the 20-layer emoji ARPG took 13.5 s a step
    with --bf16 and 4.5 s without on a 2-core AVX-512 Xeon lacking both."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_note(bf16: bool, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """A line to print when --bf16 was asked for on a CPU that would emulate it."""
    if bf16 and native_bf16(cpuinfo) is False:
        return ("note: this CPU has neither AVX512-BF16 nor AMX, so --bf16 autocast is emulated and "
                "runs about 3x slower than float32 here; drop --bf16 unless memory is the limit")
    return None


def class_balanced_weights(labels: list[int] | torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Per-sample weights ∝ 1 / count(class)^alpha (0 = natural frequencies, 1 = balanced)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels).float().clamp(min=1)
    return counts[labels].pow(-alpha)


def balanced_batches(
    weights: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Endless stream of index batches drawn with replacement by `weights`."""
    while True:
        yield torch.multinomial(weights, batch_size, replacement=True, generator=generator)


class Progress:
    """tqdm bar showing smoothed loss and images/s."""

    def __init__(self, start: int, total: int, batch_size: int):
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=5)
        self.batch_size, self.t0, self.loss = batch_size, time.time(), None

    def update(self, loss: float, **extra: float) -> None:
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        now = time.time()
        ips = self.batch_size / max(1e-6, now - self.t0)
        self.t0 = now
        self.bar.set_postfix(
            loss=f"{self.loss:.4f}", img_s=f"{ips:.1f}", **{k: f"{v:.3g}" for k, v in extra.items()}
        )
        self.bar.update(1)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def log_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def set_aside_logs(out: Path, *names: str) -> None:
    """An earlier run's logs in `out` (x.jsonl -> x.previous.jsonl), so a fresh run's are not mixed in."""
    for name in names:
        if (out / name).exists():
            (out / name).replace(out / name.replace(".jsonl", ".previous.jsonl"))


@contextlib.contextmanager
def trainer_errors(prog: str, out: Path):
    """What a user can cause in a trainer -> one line on exit, not a traceback: a bad folder, config or
    checkpoint, an --out that cannot be written, Ctrl-C before training began (or a second one)."""
    try:
        yield
    except ARPGError as exc:
        raise SystemExit(f"{prog}: error: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"{prog}: error: {exc.strerror or exc}: {exc.filename or ''}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"{prog}: interrupted; the last checkpoint saved in {out} (if any) is kept") from None


def held_out_folder(data: Path, val_data: Path | None, no_val: bool = False) -> Path | None:
    """The held-out image folder: --val-data when given (it must exist: a typo is not "no held-out
    set"), else a `val` folder beside a `train` folder, else None; None with --no-val."""
    if no_val:
        if val_data is not None:
            raise DataError("--no-val and --val-data contradict each other: pass one")
        return None
    if val_data is not None:
        if not val_data.is_dir():
            raise DataError(f"--val-data {val_data} is not a folder")
        return val_data
    sibling = data.parent / "val"
    return sibling if data.name == "train" and sibling.is_dir() else None


def check_steps_left(step: int, total: int, ckpt: Path) -> None:
    """A resumed run already at --steps would stop at once and export nothing: say so instead."""
    if step >= total:
        raise CheckpointError(f"{ckpt} is at step {step}, and --steps is {total}: nothing to train. Raise --steps "
                              "to continue (the learning rate follows the new total), or pass --fresh.")


def check_options(args, prog: str) -> None:
    """Numbers argparse accepts but training cannot use -> one-line SystemExit, not a traceback later."""
    bad = []
    for name in ("steps", "batch_size", "threads", "save_every", "eval_every", "sample_every", "reinit_every"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            bad.append(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if not (math.isfinite(args.lr) and args.lr > 0):
        bad.append(f"--lr must be a positive number (got {args.lr})")
    if args.warmup < 0:
        bad.append(f"--warmup must be 0 or more (got {args.warmup})")
    if not 0 <= args.ema_decay < 1:
        bad.append(f"--ema-decay must be in [0, 1) (got {args.ema_decay})")
    augment = getattr(args, "augment", 0)
    if not 0 <= augment <= 16:
        bad.append(f"--augment must be 0 to 16 copies (got {augment})")
    dropout = getattr(args, "class_dropout", None)
    if dropout is not None and not 0 <= dropout < 1:  # 1 never sees a label; NaN never trains the null class
        bad.append(f"--class-dropout must be in [0, 1) (got {dropout})")
    alpha = getattr(args, "balance_alpha", None)
    if alpha is not None and not 0 <= alpha <= 2:  # past 2 the weights of big classes underflow to zero
        bad.append(f"--balance-alpha must be in [0, 2] (got {alpha})")
    for name in ("weight_decay", "l1_weight", "edge_weight", "entropy_weight"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            bad.append(f"--{name.replace('_', '-')} must be 0 or more (got {value})")
    out = getattr(args, "out", None)
    if out is not None and out.exists() and not out.is_dir():
        bad.append(f"--out {out} is a file; it names the run's folder")
    if bad:
        raise SystemExit(f"{prog}: error: " + "; ".join(bad))
