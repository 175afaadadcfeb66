"""Reading user images safely and converting between PIL and tensors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from arpg_core.errors import ARPGError

MAX_PIXELS = 4096 * 4096  # larger uploads are refused before they are decoded
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")  # RGBa, La: premultiplied (a TIFF with associated alpha)


class ImageInputError(ARPGError, ValueError):
    """An upload that is not an image, is corrupt or truncated, or is too large."""


def open_image(source: str | Path | bytes | Image.Image | np.ndarray, max_pixels: int = MAX_PIXELS,
               draft: int | None = None) -> Image.Image:
    """Any common image -> RGB PIL image, EXIF rotation applied, transparency over white. `draft`: a
    JPEG may be decoded at a reduced scale whose shorter side is still at least this many pixels."""
    if isinstance(source, np.ndarray):
        source = _from_array(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        image = _decode(source, max_pixels, draft)
    if image.width * image.height > max_pixels:
        raise ImageInputError(f"image is {image.width}x{image.height}; the limit is {max_pixels:,} pixels")
    if image.width < 1 or image.height < 1:
        raise ImageInputError("image is empty")
    try:  # a PIL image passed in may still be lazily opened: its decoding errors are the upload's
        return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"the image is corrupt or truncated: {exc}") from None


def open_mask(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A mask file -> bool [H, W], True = regenerate, EXIF rotation applied as `open_image` applies
    it to the picture. White = regenerate; for a mask with transparency (strokes on a clear layer,
    in any mode: RGBA, LA, a palette or a colour key), opaque = regenerate. A file with an alpha
    channel that is opaque everywhere is read by its brightness like any other."""
    image = ImageOps.exif_transpose(_decode(source, max_pixels))
    if image.mode in (*ALPHA_MODES, "P") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return alpha > 127
    return np.asarray(_to_rgb(image).convert("L")) > 127


def _from_array(array: np.ndarray) -> Image.Image:
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] pixels -> PIL; other shapes are refused."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageInputError(f"an image array is [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got {list(array.shape)}")
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ImageInputError(f"an image array holds numbers; got {array.dtype}")
    return Image.fromarray(_to_uint8(array.astype(np.uint8) if array.dtype == bool else array))


def _decode(source, max_pixels: int, draft: int | None = None) -> Image.Image:
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(data)
            if draft and image.format == "JPEG":  # DCT scaling: a 24 MP photo decodes at 1/8 the size
                image.draft("RGB", (draft, draft))
            if image.width * image.height > max_pixels:
                raise ImageInputError(f"image is {image.width}x{image.height}; the limit is {max_pixels:,} pixels")
            image.load()  # decode now, so a truncated file fails here
    except ImageInputError:
        raise
    except FileNotFoundError:
        raise ImageInputError(f"no such image file: {source}") from None
    except UnidentifiedImageError:
        raise ImageInputError("the file is not an image Pillow can read (PNG, JPEG, WebP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"the image is too large (limit {max_pixels:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"the image is corrupt or truncated: {exc}") from None
    return image


def _to_uint8(array: np.ndarray, float_levels: bool = False) -> np.ndarray:
    """A float or wide-integer image -> uint8. Floats are fractions in [0, 1] (clipped: a resized array
    may overshoot a little), except with `float_levels` (a PIL "F" image: converting "L" to "F" keeps
    0-255 levels) when they go above 1. Integers are 8-bit levels when none is above 255 (Pillow's own
    "L" -> "I;16" keeps them so), else 16-bit: so a 16-bit image whose values all stay at or under 255,
    nearly black as 16-bit, is read as 8-bit levels instead."""
    if array.dtype == np.uint8:
        return array
    is_float = np.issubdtype(array.dtype, np.floating)
    array = np.nan_to_num(array.astype(np.float64))
    peak = array.max(initial=0)
    if is_float and (not float_levels or peak <= 1.0):
        scaled = array * 255
    else:
        scaled = array * 255 / 65535 if peak > 255 else array
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image), float_levels=True))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> [3, H, W] float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1.0


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> RGB PIL."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
