"""Image-folder data set: `root/<class>/**/*.png` (label = index in sorted folder names; images in
sub-folders of a class folder belong to it) or a flat folder of images (one class named after the
folder). With `subclasses=True` each sub-folder of a class folder is a class of its own, named
`<class>/<sub>` and grouped under `<class>` (`class_groups`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arpg_core.errors import DataError
from arpg_core.imageio import ImageInputError, open_image, to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
TRAIN_MAX_PIXELS = 8192 * 8192  # photos are fine to train on (the app's upload limit is 4096^2)


SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing", "eval", "dev"}


def _hidden(path: Path) -> bool:
    """Dot files, macOS copy debris (`._x.png` resource forks, `__MACOSX/`) and NAS thumbnail folders
    (Synology's `@eaDir`): never data."""
    return path.name.startswith(".") or path.name in ("__MACOSX", "@eaDir")


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file below `folder`, through symlinked folders too (rglob skips those), each real folder
    once (a link back up would loop), hidden entries left out."""
    seen, stack = set(), [folder]
    while stack:
        here = stack.pop()
        real = here.resolve()
        if real in seen:
            continue
        seen.add(real)
        for entry in here.iterdir():
            if _hidden(entry):
                continue
            if entry.is_dir():
                stack.append(entry)
            elif entry.is_file():
                yield entry


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    found = _files_under(folder) if recursive else (p for p in folder.iterdir() if p.is_file() and not _hidden(p))
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, size: int) -> torch.Tensor:
    """-> RGB float tensor [3, size, size] in [-1, 1]: resize shorter side, centre crop."""
    # transparent -> white (as the emoji set), EXIF rotation, any mode; big JPEGs decode at a reduced scale
    im = open_image(path, max_pixels=TRAIN_MAX_PIXELS, draft=size)
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    if (w, h) != im.size:
        im = im.resize((w, h), Image.BICUBIC if scale > 1 else Image.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    return to_tensor(im.crop((left, top, left + size, top + size)))


class ImageFolderDataset(Dataset):
    """Items are (image [3, size, size] in [-1, 1], label int).

    `classes` numbers the sub-folders as another set did (a held-out folder as its training folder),
    so a class missing here does not shift the labels of the rest. `empty_classes` lists sub-folders
    that hold no images (they are not classes); `stray_images` counts images lying next to class
    folders (they belong to no class); `notes()` says both, for the trainers to print."""

    def __init__(self, root: str | Path, size: int, classes: list[str] | None = None, subclasses: bool = False):
        self.root, self.size, self.subclasses = Path(root), size, subclasses
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not _hidden(p))
        splits = [d.name for d in dirs if d.name.lower() in SPLIT_NAMES]
        if len(splits) >= 2 or (splits and len(splits) == len(dirs)):  # a data set's root (even one holding
            # only its train folder): its splits would silently become the classes
            train = next((n for n in splits if n.lower().startswith("train")), splits[0])
            raise DataError(f"{self.root} holds the splits {', '.join(splits)}, not classes: pass "
                            f"{self.root / train} (a 'val' folder beside it is used as the held-out set)")
        if subclasses:  # each sub-folder of a class folder is a class ("class/sub"), loose images the class's own
            listed = []
            for d in dirs:
                loose = _images_in(d)
                listed += [(d.name, loose)] if loose else []
                subs = sorted(p for p in d.iterdir() if p.is_dir() and not _hidden(p))
                listed += [(f"{d.name}/{sub.name}", _images_in(sub, recursive=True)) for sub in subs]
        else:
            listed = [(d.name, _images_in(d, recursive=True)) for d in dirs]  # each folder listed once
        groups = [(name, files) for name, files in listed if files]
        self.empty_classes = [name for name, files in listed if not files] if groups else []
        self.stray_images = len(_images_in(self.root)) if groups else 0
        self.skipped: list[str] = []  # unreadable files left out by load_all
        flat = not groups
        if flat:  # no class sub-folders: the folder itself is the one class
            groups = [(self.root.name, _images_in(self.root))]
        self.class_names = list(classes) if classes is not None else [name for name, _ in groups]
        index = {name: i for i, name in enumerate(self.class_names)}
        if flat and len(self.class_names) == 1:  # a flat folder matches a one-class set whatever its name
            index = {self.root.name: 0}
        unknown = [name for name, _ in groups if name not in index]
        if unknown:
            raise DataError(f"{self.root} has classes the training set does not: {', '.join(unknown)} "
                            f"(training classes: {', '.join(self.class_names)})")
        self.samples = [(f, index[name]) for name, files in groups for f in files]
        if not self.samples:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}")

    def notes(self) -> list[str]:
        """Warnings worth printing before training: what in the folder is not used, and why."""
        out = []
        if self.empty_classes:
            out.append(f"{self.root}: skipping sub-folders without images: {', '.join(self.empty_classes)}")
        if self.stray_images:
            out.append(f"{self.root}: ignoring {self.stray_images} image(s) next to the class folders "
                       "(move them into a class folder to use them)")
        return out

    def fingerprint(self) -> str:
        """Changes when a file is added, removed, relabelled or rewritten, or the size changes."""
        h = hashlib.sha256(f"{self.size}|{'|'.join(self.class_names)}".encode())
        for path, label in self.samples:
            st = path.stat()
            h.update(f"{path.relative_to(self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:12]

    @property
    def class_groups(self) -> list[str]:
        """Each class's class folder: itself, or with `subclasses` the folder its sub-folder is in."""
        return [name.split("/", 1)[0] for name in self.class_names]

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            return load_image(path, self.size), label
        except (OSError, ImageInputError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc

    def load_all(self, log=print) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole set in memory: (images [N, 3, S, S], labels [N]); small sets train much faster so.
        Files that cannot be read (corrupt, not an image, too large) are left out with a warning
        through `log`, and listed in `skipped`; a set with none readable is a DataError."""
        images, kept, self.skipped = [], [], []
        for path, label in self.samples:
            try:
                images.append(load_image(path, self.size))
                kept.append((path, label))
            except Exception as exc:  # noqa: BLE001 - any unreadable file (bad EXIF too) is skipped, and named
                self.skipped.append(f"{path.relative_to(self.root)}: {exc or type(exc).__name__}")
        if self.skipped:
            more = len(self.skipped) - 5
            shown = "; ".join(self.skipped[:5]) + (f"; and {more} more" if more > 0 else "")
            log(f"{self.root}: skipping {len(self.skipped)} unreadable file(s): {shown}")
        if not kept:
            raise DataError(f"none of the {len(self.samples)} images under {self.root} could be read")
        self.samples = kept
        return torch.stack(images), torch.tensor(self.labels, dtype=torch.long)
