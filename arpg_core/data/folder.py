"""Image-folder data set: `root/<class>/*.png` (label = index in sorted folder names) or a flat
folder of images (one class named after the folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arpg_core.errors import DataError
from arpg_core.imageio import ImageInputError, open_image, to_tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, size: int) -> torch.Tensor:
    """-> RGB float tensor [3, size, size] in [-1, 1]: resize shorter side, centre crop."""
    im = open_image(path)  # transparent -> white (as the emoji set), EXIF rotation, any mode
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    if (w, h) != im.size:
        im = im.resize((w, h), Image.BICUBIC if scale > 1 else Image.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    return to_tensor(im.crop((left, top, left + size, top + size)))


class ImageFolderDataset(Dataset):
    """Items are (image [3, size, size] in [-1, 1], label int)."""

    def __init__(self, root: str | Path, size: int):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        subdirs = sorted(p for p in self.root.iterdir() if p.is_dir() and _images_in(p))
        if subdirs:
            self.class_names = [p.name for p in subdirs]
            self.samples = [(f, i) for i, d in enumerate(subdirs) for f in _images_in(d)]
        else:
            self.class_names = [self.root.name]
            self.samples = [(f, 0) for f in _images_in(self.root)]
        if not self.samples:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}")

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

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole set in memory: (images [N, 3, S, S], labels [N]); small sets train much faster so."""
        images = torch.stack([self[i][0] for i in range(len(self))])
        return images, torch.tensor(self.labels, dtype=torch.long)
