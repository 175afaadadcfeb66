"""Train ARPG on pre-tokenised codes of an image folder (class sub-folders, or flat = one class).

    python -m arpg_core.training.train_arpg --data data/emoji/train --tokenizer runs/vq-emoji/vq.safetensors \
        --config ARPG-emoji --out runs/arpg-emoji --steps 20000

Images are encoded once (with horizontally flipped copies unless --no-flip) and cached in --out.
Resumes from `<out>/last.pt` when it exists (pass --fresh to start over). --init starts a new run from
exported weights instead of a random initialisation (train the embedded model further, or fine-tune
a model on new images of the same classes). Every --sample-every steps a
sheet with one row per class is written to <out>/samples, and <out>/arpg.safetensors is refreshed with
the EMA or the raw weights, whichever had the lower held-out loss at the last evaluation.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from arpg_core.classes import group_index, group_label, group_names
from arpg_core.data.folder import ImageFolderDataset
from arpg_core.errors import ConfigError, DataError, UnsafeCheckpointError
from arpg_core.loading import load_model, load_tokenizer, read_metadata, resolve_source, save_checkpoint
from arpg_core.models.arpg import ARPG, ARPGConfig
from arpg_core.sampling.sampler import generate
from arpg_core.tokenizer.vq import VQModel
from arpg_core.training import common
from arpg_core.training.grow import split_classes
from arpg_core.training.objective import arpg_loss, heldout_loss, init_arpg_weights, unigram_loss

EXPORT_NAME = "arpg.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="train image folder")
    p.add_argument("--val-data", type=Path, help="default: sibling 'val' folder of --data when it exists")
    p.add_argument("--no-val", action="store_true", help="no held-out folder, even when a 'val' sibling exists")
    p.add_argument("--tokenizer", required=True, help="VQ checkpoint (path or hf://)")
    p.add_argument("--config", default=None, help="ARPGConfig preset name or a JSON file for the model's shape "
                   "(default ARPG-emoji); vocabulary, classes and grid come from the tokenizer and the data")
    p.add_argument("--init", default=None, help="exported ARPG weights (path or hf://) to start a new run from, "
                   "e.g. assets/arpg_emoji.safetensors; its shape replaces --config; not applied on resume")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument("--balance-alpha", type=float, default=0.5, help="class weights ∝ 1/count^alpha (with "
                   "--subclasses, group weights; a group's subclasses keep their own frequencies)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no mirrored copies (for data where left and right differ: text, arrows, digits)")
    p.add_argument("--subclasses", action="store_true",
                   help="each sub-folder of a class folder is a class of its own, grouped under its class "
                   "(the emoji groups' subgroups): sharper conditions for classes of mixed things; "
                   "--init may then be a model of the groups, each subclass starting as its group")
    p.add_argument("--augment", type=int, default=0, help="also encode this many copies of each image, shrunk "
                   "(75-100%%) and shifted on its border colour: more layouts for small classes of objects on a "
                   "plain background (emoji, icons); not for photos, whose edges it would smear")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast: only worth it on CPUs with native bf16 (AVX512-BF16/AMX); emulated, "
                   "so 3x slower than float32, on AVX-512 alone (the trainer says so when it starts)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    return p.parse_args(argv)


def class_names_of(folder: Path, data: ImageFolderDataset, folders: list[str] | None = None) -> list[str]:
    """Readable names from a data set's meta.json ("classes" paired with "folders", and "subclasses"
    for sub-folders, as `arpg_core.data.emoji` writes it) when it names every class folder, else the
    folder names. `folders`: other folder names to name than the data's classes (its groups)."""
    folders = list(data.class_names if folders is None else folders)
    for meta in (folder / "meta.json", folder.parent / "meta.json"):
        if not meta.is_file():
            continue
        try:
            info = json.loads(meta.read_text())
            by_folder = dict(zip(info["folders"], info["classes"], strict=True)) | dict(info.get("subclasses", {}))
            return [str(by_folder[name]) for name in folders]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{meta}: not used for class names ({type(exc).__name__}: {exc}); using the folder names",
                  flush=True)
    return folders


def class_groups_of(folder: Path, data: ImageFolderDataset) -> list[str] | None:
    """With sub-folder classes, the readable name of each class's group; else None."""
    return class_names_of(folder, data, data.class_groups) if data.subclasses else None


def shrink_and_shift(images: torch.Tensor, generator: torch.Generator, smallest: float = 0.75) -> torch.Tensor:
    """Each image scaled by a random factor in [smallest, 1] and placed at a random spot of its own
    canvas, the rest filled with its border colour (the per-channel median of its edge pixels): new
    layouts of an object on a plain background (emoji, icons), with nothing of it cut off."""
    b, _, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(b):
        x = images[i]
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)  # [C, 2H + 2W]
        out[i] = border.median(dim=1).values[:, None, None]
        scale = smallest + (1 - smallest) * torch.rand((), generator=generator).item()
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        small = torch.nn.functional.interpolate(x[None], size=(sh, sw), mode="bilinear", antialias=True,
                                                align_corners=False)[0]
        top = int(torch.randint(0, h - sh + 1, (), generator=generator))
        left = int(torch.randint(0, w - sw + 1, (), generator=generator))
        out[i, :, top:top + sh, left:left + sw] = small
    return out


@torch.no_grad()
def tokenize_folder(tokenizer: VQModel, data: ImageFolderDataset, flips: bool, batch: int = 64,
                    augment: int = 0, seed: int = 0):
    """-> (codes [M, N] long, labels [M] long): the images, then `augment` shrunk-and-shifted copies
    of each (seeded, so a cache stays valid), then the mirrors of all of those when `flips`."""
    images, labels = data.load_all()
    gen = torch.Generator().manual_seed(seed)
    codes, mirrored = [], []
    for k in range(1 + augment):  # one variant in memory at a time
        variant = images if k == 0 else shrink_and_shift(images, gen)
        codes += [tokenizer.encode(chunk).flatten(1) for chunk in variant.split(batch)]
        if flips:
            mirrored += [tokenizer.encode(chunk.flip(-1)).flatten(1) for chunk in variant.split(batch)]
    labels = labels.repeat((1 + augment) * (2 if flips else 1))
    return torch.cat(codes + mirrored), labels


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def cached_codes(tokenizer: VQModel, tokenizer_digest: str, folder: Path, out: Path, flips: bool,
                 classes: list[str] | None = None, augment: int = 0, data: ImageFolderDataset | None = None,
                 subclasses: bool = False):
    """-> (codes, labels, readable class names, class folder names). The cache is keyed by the
    tokenizer's bytes and the folder's files (names, sizes, times), so edited data is re-encoded.
    `data`: the folder already listed, if the caller has it."""
    if data is None:
        data = ImageFolderDataset(folder, tokenizer.config.image_size, classes=classes, subclasses=subclasses)
    for note in data.notes():
        print(note, flush=True)
    names = class_names_of(folder, data)
    cache = out / (f"codes_{folder.name}_{tokenizer_digest}_{data.fingerprint()}{'_flip' if flips else ''}"
                   f"{f'_aug{augment}v1' if augment else ''}.pt")  # v1: shrink_and_shift as it is, seed 0
    if cache.exists():
        try:
            saved = torch.load(cache, weights_only=True)
            return saved["codes"], saved["labels"], names, saved["folders"]
        except Exception as exc:  # a cache cut short (disk full, killed mid-write): encode again
            print(f"{cache.name} is unreadable ({type(exc).__name__}); encoding again", flush=True)
    print(f"encoding {len(data)} images of {folder}{f' and {augment} copies of each' if augment else ''} ...",
          flush=True)
    codes, labels = tokenize_folder(tokenizer, data, flips, augment=augment)
    common.save_checkpoint(cache, codes=codes, labels=labels, folders=data.class_names)  # atomic
    return codes, labels, names, data.class_names


def row_labels(model: ARPG, row: int, count: int, seed: int = 0) -> list[int]:
    """The classes of a sample sheet's row: the class `row`, or with subclasses (`class_groups`) the
    classes of the row-th group that seeds seed..seed+count-1 draw, as a pipeline asking for the group."""
    groups, counts = getattr(model, "class_groups", None), getattr(model, "class_counts", None)
    return [group_label(groups, row, seed + i, counts) for i in range(count)] if groups else [row] * count


def sheet_rows(model: ARPG) -> list[str] | None:
    """The names of a sample sheet's rows: the groups for a model of subclasses, else its classes."""
    groups = getattr(model, "class_groups", None)
    return group_names(groups) if groups else getattr(model, "class_names", None)


@torch.no_grad()
def class_samples(model: ARPG, tokenizer: VQModel, label: int, count: int, steps: int = 64,
                  cfg_scale: float = 4.0, seed: int = 0) -> torch.Tensor:
    """`count` decoded images [count, 3, H, W] of one class (or group, with subclasses): a sample
    sheet's row (same seeds)."""
    g = model.config.grid_size
    gens = [torch.Generator().manual_seed(seed + 1000 * label + i) for i in range(count)]
    tokens = generate(model, row_labels(model, label, count, seed), steps=steps, cfg_scale=cfg_scale, generator=gens)
    return tokenizer.decode(tokens.view(-1, g, g)).clamp(-1, 1)


@torch.no_grad()
def sample_sheet(model: ARPG, tokenizer: VQModel, path: Path, per_class: int = 8, steps: int = 64,
                 cfg_scale: float = 4.0, seed: int = 0) -> Path:
    """One row per class (per group, with subclasses), `per_class` samples each, decoded to pixels;
    labelled when the model has class names."""
    names = sheet_rows(model)
    count = len(names) if names else model.config.num_classes
    rows = [torch.cat(list(class_samples(model, tokenizer, c, per_class, steps, cfg_scale, seed)), dim=-1)
            for c in range(count)]
    sheet = torch.cat(rows, dim=-2)
    array = ((sheet + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    if names:  # the class asked for, left of each row
        row_h, margin = image.height // len(rows), 120
        labelled = Image.new("RGB", (image.width + margin, image.height), "white")
        labelled.paste(image, (margin, 0))
        draw = ImageDraw.Draw(labelled)
        for c, name in enumerate(names):
            draw.text((4, c * row_h + row_h // 2), name, fill=(30, 30, 30), anchor="lm")
        image = labelled
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


EVAL_LOG = "eval.jsonl"


def prefers_ema(record: dict) -> bool:
    """An evaluation record's choice: the EMA weights unless the raw ones had the lower held-out loss."""
    return record["val_loss_ema"] <= record["val_loss"]


def evaluate(model, ema, val, unigram, step, args, progress) -> bool:
    """Logs held-out losses; -> whether the EMA weights are the better ones (True without a held-out
    set: they are the usual choice once a run is long enough to sample from)."""
    averaged = ema.module(model).eval()
    record = {"step": step, "time": time.time(), "unigram_loss": unigram}
    use_ema = True
    if val is not None:
        record["val_loss_ema"] = heldout_loss(averaged, *val)
        record["val_loss"] = heldout_loss(model.eval(), *val)
        model.train()
        use_ema = prefers_ema(record)  # early on the EMA still holds the init
        progress.write(f"[eval] step {step}: held-out loss {record['val_loss']:.4f} "
                       f"(EMA {record['val_loss_ema']:.4f}), unigram {unigram:.4f}")
    common.log_jsonl(args.out / EVAL_LOG, record)
    return use_ema


def last_choice(out: Path, step: int) -> bool:
    """EMA or raw, as the last evaluation up to `step` in <out>/eval.jsonl chose (EMA when there is
    none), so a resumed run stopped before its next evaluation exports what the run last preferred."""
    use_ema = True
    try:
        lines = (out / EVAL_LOG).read_text().splitlines()
    except OSError:
        return use_ema
    for line in lines:
        try:
            record = json.loads(line)
            if record["step"] <= step and "val_loss" in record:
                use_ema = prefers_ema(record)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill mid-write
    return use_ema


def snapshot(model, ema, tokenizer, step, args, names, use_ema: bool = True, sheet: bool = True,
             groups: list[str] | None = None, counts: list[int] | None = None) -> None:
    """Exported weights (and a sample sheet), so a run can be inspected and used while it trains. The
    metadata names the tokenizer's codes, so `export` can refuse a tokenizer that encodes otherwise."""
    weights = (ema.module(model) if use_ema else copy.deepcopy(model)).eval()
    weights.class_names, weights.class_groups, weights.class_counts = names, groups, counts
    if sheet:
        sample_sheet(weights, tokenizer, args.out / "samples" / f"step_{step:06d}.png")
    save_checkpoint(weights, args.out / EXPORT_NAME, class_names=names, dtype=torch.bfloat16,
                    extra_metadata={"step": str(step), "weights": "ema" if use_ema else "raw",
                                    "tokenizer_codes": tokenizer.codes_digest()})


def saved_state(args) -> dict | None:
    ckpt = args.out / common.CHECKPOINT_NAME
    return None if args.fresh or not ckpt.exists() else common.load_checkpoint(ckpt)


def check_resume(state: dict | None, ckpt: Path, codes_digest: str, tokenizer_digest: str,
                 folders: list[str] | None = None) -> None:
    """A resumed run must see the codes (and class folders) it began with: other codes or labels would
    silently mean something else to the weights. The codes are compared by what decides them (so a
    decoder-only fine-tune of the tokenizer passes, as it does for --init and export); checkpoints
    written before that record was kept are compared by the tokenizer file's bytes."""
    if state is None:
        return
    hint = "Use another --out, or --fresh to start over."
    before, now = state.get("tokenizer_codes"), codes_digest
    if before is None:
        before, now = state.get("tokenizer_digest"), tokenizer_digest
    if before is not None and before != now:
        raise ConfigError(f"{ckpt} was trained on the codes of another tokenizer (sha256 {before}..., this one "
                          f"{now}...). {hint}")
    was = state.get("class_folders")
    if folders is not None and was is not None and was != folders:
        added, removed = sorted(set(folders) - set(was)), sorted(set(was) - set(folders))
        change = "; ".join(part for part in (f"added: {', '.join(added[:5])}" if added else "",
                                             f"removed: {', '.join(removed[:5])}" if removed else "") if part)
        raise ConfigError(f"{ckpt} was trained on other classes ({change or 'renumbered'}), so its class labels "
                          f"would shift. {hint}")


def load_init(source: str, tokenizer: VQModel, config: str | None = None) -> ARPG:
    """The weights a new run starts from. Refused when they were trained on another tokenizer's codes
    (the metadata's `tokenizer_codes`) or on another vocabulary or grid: they would mean other tokens."""
    path = resolve_source(source)
    meta = read_metadata(path)
    if "config" not in meta:  # a published .pt: the shape is inferred (or --config), the codes unchecked
        print(f"--init {source}: no config or codes record in the file; its shape is "
              f"{'--config ' + config if config else 'inferred from the weights'}", flush=True)
    try:
        model = load_model(path, None if "config" in meta else config)
    except UnsafeCheckpointError as exc:
        raise ConfigError(f"--init {source}: {exc} --init takes exported weights such as <out>/arpg.safetensors; "
                          "a run's last.pt is continued by passing its folder as --out") from None
    model.shape_from_file = "config" in meta
    cfg, tok = model.config, tokenizer.config
    if (cfg.vocab_size, cfg.grid_size) != (tok.codebook_size, tok.grid_size):
        raise ConfigError(f"--init {source}: the model has vocab {cfg.vocab_size} and grid {cfg.grid_size}, the "
                          f"tokenizer vocab {tok.codebook_size} and grid {tok.grid_size}")
    codes = meta.get("tokenizer_codes")
    if codes is not None and codes != tokenizer.codes_digest():
        raise ConfigError(f"--init {source} was trained on the codes of another tokenizer (codes {codes}, this "
                          f"tokenizer's {tokenizer.codes_digest()}); pass the tokenizer it was trained with")
    return model


def check_init(init: ARPG, names: list[str], source: str, groups: list[str] | None = None) -> ARPG:
    """The data's classes must be the model's: same count, and the same names where both have them.
    With subclasses (`groups`), a model of the groups is split: each subclass starts as its group."""
    have = init.config.num_classes
    parents = group_names(groups) or None
    if parents and have == len(parents) != len(names):
        if init.class_names and list(init.class_names) != parents:
            raise ConfigError(f"--init {source} has the classes {', '.join(init.class_names)}, not the groups "
                              f"of the data's subclasses ({', '.join(parents)})")
        print(f"--init {source}: its {have} classes split into the data's {len(names)} subclasses", flush=True)
        init = split_classes(init, group_index(groups))
        init.class_names = names
        init.shape_from_file = True
        return init
    if have != len(names):
        raise ConfigError(f"--init {source} has {have} classes, the data {len(names)}: a class index would mean "
                          "another class")
    if init.class_names and list(init.class_names) != list(names):
        pairs = enumerate(zip(init.class_names, names, strict=False))
        changed = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in pairs if a != b]
        print(f"--init {source}: class names differ from the data's ({'; '.join(changed[:3])}); training on "
              "the data's classes by index", flush=True)
    return init


def build(args, state: dict | None, vocab: int, num_classes: int, grid: int, init: ARPG | None = None):
    """Model, EMA, optimiser and start step. A new run takes the preset's shape with the vocabulary,
    class count and grid of the data (or the shape and weights of --init); a resumed run keeps its own."""
    ckpt = args.out / common.CHECKPOINT_NAME
    preset = ARPGConfig.from_spec(args.config or "ARPG-emoji")
    wanted = replace(preset, vocab_size=vocab, num_classes=num_classes, grid_size=grid)
    if init is not None:  # train() passes it for a new run only
        if args.config is not None and init.shape_from_file:
            print(f"--init: the model shape of {args.init} is kept, --config {args.config} is not applied", flush=True)
        cfg = init.config
    elif state:
        cfg = ARPGConfig.from_dict(state["config"])
        if (cfg.vocab_size, cfg.num_classes, cfg.grid_size) != (vocab, num_classes, grid):
            raise ConfigError(f"{ckpt} has vocab {cfg.vocab_size}, {cfg.num_classes} classes, grid "
                              f"{cfg.grid_size}; the data has vocab {vocab}, {num_classes} classes, grid {grid}")
        if args.config is not None and cfg != wanted:
            print(f"resuming {ckpt}: its model shape is kept, --config {args.config} is not applied", flush=True)
    else:
        cfg = wanted
    model = ARPG(cfg)
    init_arpg_weights(model)
    if init is not None:
        model.load_state_dict({k: v.float() for k, v in init.state_dict().items()})
    ema = common.EMA(model, args.ema_decay)
    optimizer = common.make_optimizer(model, args.lr, args.weight_decay, betas=(0.9, 0.95))
    step = common.restore_training_state(state, model, ema, optimizer) if state else 0
    common.apply_settings(ema, optimizer, args.ema_decay, args.weight_decay)  # the command line wins on resume
    return model, ema, optimizer, step


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if note := common.bf16_note(args.bf16):
        print(note, flush=True)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tok_path = resolve_source(args.tokenizer)  # a path, or hf://... through the hub cache
    tokenizer = load_tokenizer(tok_path)
    digest, codes_digest = file_digest(tok_path), tokenizer.codes_digest()
    state = saved_state(args)
    # refusals before the time spent encoding the folder
    check_resume(state, args.out / common.CHECKPOINT_NAME, codes_digest, digest)
    if state:
        common.check_steps_left(int(state["step"]), args.steps, args.out / common.CHECKPOINT_NAME)
        if args.init:
            print(f"resuming {args.out / common.CHECKPOINT_NAME}: --init {args.init} is not applied", flush=True)
    init = load_init(args.init, tokenizer, args.config) if args.init and not state else None
    listed = ImageFolderDataset(args.data, tokenizer.config.image_size, subclasses=args.subclasses)  # once
    groups = class_groups_of(args.data, listed)
    counts = listed.class_counts() if groups else None  # images per subclass: a group's odds when asked for
    if init is not None:  # the class list is cheap to read; encoding is not
        init = check_init(init, class_names_of(args.data, listed), args.init, groups)
    val_dir = common.held_out_folder(args.data, args.val_data, args.no_val)
    codes, labels, names, folders = cached_codes(tokenizer, digest, args.data, args.out, flips=args.flip,
                                                 augment=args.augment, data=listed)
    check_resume(state, args.out / common.CHECKPOINT_NAME, codes_digest, digest, folders)
    val = None
    if val_dir is not None:
        val = cached_codes(tokenizer, digest, val_dir, args.out, flips=False, classes=folders,
                           subclasses=args.subclasses)[:2]
    if len(codes) == 0:
        raise DataError(f"no training images under {args.data}")
    run_id = {"tokenizer_digest": digest, "tokenizer_codes": codes_digest, "class_folders": folders}
    model, ema, optimizer, step = build(args, state, tokenizer.config.codebook_size, len(names),
                                        tokenizer.config.grid_size, init)
    del init  # its weights are in the model now
    unigram = unigram_loss(codes, val[0] if val else codes, tokenizer.config.codebook_size)
    print(f"ARPG {model.config.to_json()} | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | "
          f"{len(codes)} sequences, {len(names)} classes | batch {args.batch_size} | start step {step}",
          flush=True)
    gen = torch.Generator().manual_seed(args.seed * 1000 + step)
    # with subclasses the draw balances the groups (the classes a user asks for), each group's
    # subclasses at their own frequencies: a subgroup of one emoji must not weigh as much as a group
    balance_by = labels if groups is None else torch.tensor(group_index(groups))[labels]
    batches = common.balanced_batches(common.class_balanced_weights(balance_by, args.balance_alpha),
                                      args.batch_size, gen)
    progress = common.Progress(step, args.steps, args.batch_size)
    save = lambda: common.save_checkpoint(args.out / common.CHECKPOINT_NAME, **common.training_state(
        model, ema, optimizer, step, model.config.to_dict(), class_names=names, **run_id))
    model.train()
    use_ema = last_choice(args.out, step) if state else True
    if not state:
        common.set_aside_logs(args.out, EVAL_LOG)
    with common.StopFlag() as flag:
        while step < args.steps and not flag.stop:
            idx = next(batches)
            common.set_lr(optimizer, common.lr_at(step, args.lr, args.warmup, args.steps))
            with common.autocast(args.bf16):
                loss = arpg_loss(model, codes[idx], labels[idx], class_dropout=args.class_dropout, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            ema.update(model, step)
            step += 1
            progress.update(loss.item())
            if step % args.eval_every == 0 or step == args.steps:
                use_ema = evaluate(model, ema, val, unigram, step, args, progress)
            if step % args.sample_every == 0 or step == args.steps:
                snapshot(model, ema, tokenizer, step, args, names, use_ema, groups=groups, counts=counts)
            if step % args.save_every == 0:
                save()
        if flag.stop and step % args.sample_every:  # stopped early: export the weights reached, skip the sheet
            save()  # first: a second signal during the export must not lose the steps since the last save
            snapshot(model, ema, tokenizer, step, args, names, use_ema, sheet=False, groups=groups,
                     counts=counts)
    save()
    progress.close()
    print(f"stopped at step {step}; checkpoint {args.out / common.CHECKPOINT_NAME}", flush=True)
    return step


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.check_options(args, "train_arpg")
    with common.trainer_errors("train_arpg", args.out):
        train(args)


if __name__ == "__main__":
    main()
