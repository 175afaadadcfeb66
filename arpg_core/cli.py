"""`arpg`: sample, edit and benchmark from the command line, on one CPU or many GPUs (torchrun).

    arpg sample --classes all --per-class 4 --out samples/
    torchrun --nproc_per_node=8 -m arpg_core.cli sample --classes all --per-class 50 --out fid/
    arpg inpaint --image in.png --mask mask.png --class 3 --out out.png
    arpg outpaint --image in.png --pad 0,8,0,8 --out wide.png
    arpg expand --image in.png --out big.png
    arpg bench --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arpg_core.defaults import default_model_source, default_tokenizer_source
from arpg_core.distributed import Distributed
from arpg_core.errors import ARPGError
from arpg_core.imageio import ImageInputError, open_image, open_mask
from arpg_core.loading import load_model, load_tokenizer
from arpg_core.pipeline import MAX_CANVAS_CELLS, Pipeline, run_to_end
from arpg_core.sampling.options import SamplingOptions
from arpg_core.sampling.sampler import seeded

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CLIError(ARPGError):
    """A command-line value that cannot be used; printed without a traceback."""


# ---- shared options --------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="ARPG checkpoint: path or hf://owner/repo/file "
                   "(default: $ARPG_MODEL or the embedded emoji model)")
    g.add_argument("--tokenizer", default=None, help="VQ checkpoint (default: $ARPG_TOKENIZER or embedded)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    g.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                   help="model precision (default: bf16 on GPU, fp32 on CPU)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=64)
    g.add_argument("--schedule", choices=["arccos", "cosine", "linear"], default="arccos")
    g.add_argument("--cfg-scale", type=float, default=4.0)
    g.add_argument("--cfg-schedule", choices=["constant", "linear"], default="constant")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--order", choices=["random", "raster", "spiral", "edges-in"], default="random")
    g.add_argument("--step-attention", choices=["causal", "full"], default="causal",
                   help="tokens fed in one step see only earlier ones (causal, as in training) or each other "
                        "(full, as the authors' sampler that produced the paper's FID)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed + i")


def sampling_options(args) -> SamplingOptions:
    return SamplingOptions(steps=args.steps, schedule=args.schedule, cfg_scale=args.cfg_scale,
                           cfg_schedule=args.cfg_schedule, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, order=args.order, step_attention=args.step_attention)


def check_device(device: str) -> str:
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:1, mps ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: this torch sees no CUDA GPU (a CPU-only build, or no driver)")
    try:  # mps or xpu on a build without them, cuda:7 on a one-GPU machine ...
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, NotImplementedError) as exc:
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"--device {device} cannot be used here: {reason}") from None
    return device


def load_pipeline(args, device: str | None = None):
    device = check_device(device or args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
    model = load_model(args.model or default_model_source(), device=device, dtype=PRECISIONS[precision])
    tokenizer = load_tokenizer(args.tokenizer or default_tokenizer_source(), device=device)
    return Pipeline(model, tokenizer)


def parse_classes(text: str, num_classes: int) -> list[int]:
    """'all', '3', '0,2,5', '0-9' or a mix like '0-3,7'."""
    if text.strip().lower() == "all":
        return list(range(num_classes))
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            ends = [int(lo), int(hi)] if hi else [int(lo)]
        except ValueError:
            raise CLIError(f"--classes must look like 'all', '3', '0,2,5' or '0-9', got {text!r}") from None
        bad = [c for c in ends if not 0 <= c < num_classes]
        if bad:  # checked before a range is built: 0-1000000000 must not fill the memory first
            raise CLIError(f"class(es) {bad} out of range: this model has classes 0..{num_classes - 1}")
        out.extend(range(ends[0], ends[-1] + 1))
    if not out:
        raise CLIError(f"--classes {text!r} names no class (a range runs low-high)")
    return out


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".arpg-write-test-", dir=path)  # unique: ranks check at once
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CLIError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


TMP_SUFFIX = ".part"


def save_image(image: Image.Image, path: Path) -> None:
    """Write then rename, so a crash never leaves a half-written file that a rerun would skip. The
    format follows the name's extension (.png, .jpg, .webp ...). The file being written is hidden and
    does not end in the image's extension, so tools that collect *.png never see it."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        image.save(tmp, format=writable_formats().get(path.suffix.lower()))
    except (OSError, KeyError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise CLIError(f"cannot write {path}: {exc}") from None
    tmp.replace(path)


def writable_formats() -> dict[str, str]:
    """Extensions Pillow can write an RGB picture as (.png, .jpg, .webp ...; not .psd, read-only)."""
    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def is_image_name(path: Path) -> bool:
    """out.png, out.JPG: a file; results, results.v2: a folder. A read-only image format (.psd) is an error."""
    suffix = path.suffix.lower()
    if suffix in writable_formats():
        return True
    if suffix in Image.registered_extensions():
        raise CLIError(f"--out {path}: Pillow cannot write {suffix} files; use .png, .jpg or .webp")
    return False


# ---- sample ------------------------------------------------------------------------------------
def cmd_sample(args) -> None:

    with Distributed() as dist:
        out = writable_dir(Path(args.out))  # on every rank: one failing alone would leave the rest at a barrier
        pipe = load_pipeline(args, device=dist.device(args.device))
        labels = sample_labels(args, pipe)
        opts = sampling_options(args)
        check_run_record(out, run_record(args, pipe, labels, opts), write=dist.is_main)
        if dist.is_main:
            for stale in out.glob(f".*.png{TMP_SUFFIX}"):  # a killed run's half-written image
                stale.unlink(missing_ok=True)
        dist.barrier()  # the record is written before any rank adds an image
        mine = [i for i in range(len(labels)) if i % dist.world == dist.rank]
        todo = [i for i in mine if not (out / f"{i:06d}.png").exists()]
        bar = dist.progress(total=len(labels), initial=len(labels) - len(todo) * dist.world, desc="sampling")
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            seeds = [args.seed + i for i in chunk]
            images = run_to_end(pipe.generate([labels[i] for i in chunk], options=opts, seeds=seeds))
            for i, image in zip(chunk, images, strict=True):
                save_image(image, out / f"{i:06d}.png")
            bar.update(len(chunk) * dist.world)
        bar.close()
        dist.barrier()
        if dist.is_main:
            npz = write_npz(out, len(labels))
            size = pipe.image_size
            print(f"wrote {len(labels)} images and {npz} ({len(labels)} x {size} x {size} x 3 uint8)")


def sample_labels(args, pipe: Pipeline) -> list[int]:
    """Image i's class: --classes in turn, --per-class images each; with --groups, --classes names groups
    of a model of subclasses, and image i takes the class of its group that seed + i draws."""
    if not args.groups:
        return [c for c in parse_classes(args.classes, len(pipe.class_names)) for _ in range(args.per_class)]
    if not pipe.group_names:
        raise CLIError("--groups needs a model trained on subclasses (train_arpg --subclasses); this one has none")
    groups = [g for g in parse_classes(args.classes, len(pipe.group_names)) for _ in range(args.per_class)]
    return [pipe.group_label(g, args.seed + i) for i, g in enumerate(groups)]


def edit_label(args, pipe: Pipeline) -> int:
    """--class, or the class of --group that --seed draws."""
    if args.group is None:
        return args.class_
    if not pipe.group_names:
        raise CLIError("--group needs a model trained on subclasses (train_arpg --subclasses); this one has none")
    if not 0 <= args.group < len(pipe.group_names):
        raise CLIError(f"--group {args.group} out of range: this model has groups 0..{len(pipe.group_names) - 1}")
    return pipe.group_label(args.group, args.seed)


RUN_RECORD = "sample-run.json"


def run_record(args, pipe: Pipeline, labels: list[int], opts: SamplingOptions) -> dict:
    """What decides the images of a `sample` run: a rerun into the same --out must match it."""
    record = {"model": str(args.model or default_model_source()), "model_config": pipe.model.config.to_dict(),
              "tokenizer": str(args.tokenizer or default_tokenizer_source()),
              "dtype": str(next(pipe.model.parameters()).dtype), "labels": labels, "seed": args.seed,
              "options": opts.to_dict()}
    return json.loads(json.dumps(record, default=str))  # as it reads back: tuples become lists


def check_run_record(out: Path, record: dict, write: bool) -> None:
    """A rerun skips the images already in `out`; that is only right for the same settings. The first
    run writes its record there; a later run with other settings is refused instead of mixing in."""
    path = out / RUN_RECORD
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before != record:
            changed = sorted(k for k in record if not isinstance(before, dict) or before.get(k) != record[k])
            raise CLIError(f"{out} holds images of a sample run with other settings ({', '.join(changed)} "
                           f"differ); a rerun only fills in missing images. Use another --out, or empty it.")
        return
    if any(out.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")):
        raise CLIError(f"{out} already holds numbered images of unknown settings (no {RUN_RECORD}); use another "
                       f"--out, or empty it")
    if write:
        tmp = out / f".{RUN_RECORD}{TMP_SUFFIX}"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)


def write_npz(out: Path, count: int) -> Path:
    """The layout the ADM / guided-diffusion FID evaluator reads: arr_0, uint8 [N, H, W, 3]."""
    missing = [i for i in range(count) if not (out / f"{i:06d}.png").exists()]
    if missing:
        raise CLIError(f"{len(missing)} of the {count} images are not in {out} (first: {missing[0]:06d}.png). With "
                       f"several machines, --out must be a folder they all share; rerun to fill the gaps.")
    first = np.asarray(Image.open(out / f"{0:06d}.png").convert("RGB"))
    arr = np.empty((count, *first.shape), np.uint8)  # one copy in memory: 50k ImageNet samples are 9.8 GB
    for i in range(count):
        image = first if i == 0 else np.asarray(Image.open(out / f"{i:06d}.png").convert("RGB"))
        if image.shape != first.shape:
            raise CLIError(f"{out / f'{i:06d}.png'} is {image.shape[1]}x{image.shape[0]}, the others "
                           f"{first.shape[1]}x{first.shape[0]}: the folder mixes runs")
        arr[i] = image
    path = out / f"samples_{count}.npz"
    np.savez(path, arr_0=arr)
    return path


# ---- editing -----------------------------------------------------------------------------------
def read_image(path: str) -> Image.Image:
    try:
        return open_image(Path(path))
    except ImageInputError as exc:
        raise CLIError(f"{path}: {exc}") from None


def read_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    """White = regenerate; for a mask with transparency, opaque = regenerate (see open_mask)."""
    try:
        mask = open_mask(Path(path))
    except ImageInputError as exc:  # missing, unreadable, not an image, too large
        raise CLIError(f"cannot read mask {path}: {exc}") from None
    if mask.shape != (size[1], size[0]):
        raise CLIError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
    return mask


def parse_pad(text: str) -> tuple[int, int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 4
    if len(values) != 4 or min(values) < 0:
        raise CLIError(f"--pad takes 'top,right,bottom,left' token cells (or one number), got {text!r}")
    top, right, bottom, left = values
    if max(top + bottom, left + right) >= MAX_CANVAS_CELLS:  # the image needs at least one cell: over for any model
        raise CLIError(f"--pad {text} leaves no room for the image: the canvas limit is {MAX_CANVAS_CELLS} cells "
                       "per side, image included")
    return tuple(values)


def edit_target(args) -> Path:
    """--out as a file (its extension picks the format) or a folder (a PNG named after the image);
    checked before the model loads."""
    out = Path(args.out)
    file = is_image_name(out)
    writable_dir(out.parent if file else out)
    return out if file else out / f"{Path(args.image).stem}_{args.command}.png"


def edit_settings(args) -> tuple[SamplingOptions, Path]:
    seeded(args.seed)  # a seed torch cannot hold is a SamplingError now, not after loading
    return sampling_options(args), edit_target(args)


def run_edit(target: Path, frames) -> None:
    image = run_to_end(frames)[0]
    save_image(image, target)
    print(f"wrote {target} ({image.width}x{image.height})")


# Each command reads its inputs and checks --seed and --out first: a typo is reported before a
# model loads (for an hf:// model, before a download).
def cmd_inpaint(args) -> None:
    image = read_image(args.image)
    mask = read_mask(args.mask, image.size)
    opts, target = edit_settings(args)
    pipe = load_pipeline(args)
    run_edit(target, pipe.inpaint(image, mask, edit_label(args, pipe), args.seed, opts))


def cmd_outpaint(args) -> None:
    image, pad = read_image(args.image), parse_pad(args.pad)
    opts, target = edit_settings(args)
    pipe = load_pipeline(args)
    run_edit(target, pipe.outpaint(image, pad, edit_label(args, pipe), args.seed, opts))


def cmd_expand(args) -> None:
    image = read_image(args.image)
    opts, target = edit_settings(args)
    pipe = load_pipeline(args)
    run_edit(target, pipe.expand(image, edit_label(args, pipe), args.seed, opts, windowed=args.windowed))


def cmd_bench(args) -> None:
    from arpg_core import bench

    bench.main(args.bench_args)


# ---- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arpg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="class-conditional samples as PNGs plus an FID .npz",
                       description="Sample images per class. Image i (global index) uses seed + i, so the "
                       "images do not depend on the number of processes (byte for byte with --batch-size 1; "
                       "larger batches round differently); finished PNGs are skipped on a rerun with the same "
                       "settings.")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--classes", default="all", help="'all', '3', '0,2,5', '0-9' (default: all)")
    p.add_argument("--groups", action="store_true", help="--classes names class groups of a model trained on "
                   "subclasses (the emoji model's 9 groups); image i takes the class of its group that seed + i draws")
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_sample)

    for name, func, help_text in (("inpaint", cmd_inpaint, "regenerate the masked part of an image"),
                                  ("outpaint", cmd_outpaint, "grow the canvas around an image"),
                                  ("expand", cmd_expand, "twice the token grid in each direction")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_model_args(p)
        add_sampling_args(p)
        p.add_argument("--image", required=True)
        which = p.add_mutually_exclusive_group()
        which.add_argument("--class", dest="class_", type=int, default=-1, help="class of the new content (-1 = none)")
        which.add_argument("--group", type=int, default=None, help="a class group of a model trained on subclasses "
                           "instead: the new content takes the class of the group that --seed draws")
        p.add_argument("--out", required=True, help="output file (.png, .jpg, .webp ...: the extension picks the "
                       "format) or folder (a PNG named after the image)")
        if name == "inpaint":
            p.add_argument("--mask", required=True,
                           help="same size as the image; white = regenerate (a layer with transparency: opaque)")
        if name == "outpaint":
            p.add_argument("--pad", required=True, help="token cells to add: top,right,bottom,left (or one number)")
        if name == "expand":
            p.add_argument("--windowed", action="store_true",
                           help="decode in overlapping windows of the trained grid instead of the whole 2x grid at "
                                "once with interpolated positions (the default: better in the README's comparison)")
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help="parallel vs raster decoding and KV-cache size", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER would reject a leading option such as --quick
        from arpg_core import bench

        try:
            bench.main(argv[1:])
        except ARPGError as exc:
            print(f"arpg bench: error: {exc}", file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    for name in ("steps", "per_class", "batch_size"):
        if getattr(args, name, 1) < 1:
            print(f"arpg: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    try:
        args.func(args)
    except ARPGError as exc:
        print(f"arpg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
