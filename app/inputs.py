"""Image inputs that refuse bad uploads with a clear message before Gradio decodes them.

`gr.Image` and `gr.ImageEditor` open uploads with Pillow during preprocessing, so a file that is not
an image, a truncated one or a decompression bomb would fail there with Pillow's own exception.
These subclasses read the header first (size against the pixel cap, bombs as errors) and turn any
decoding failure into a `gr.Error`. The frontend is the stock one (`is_template`).
"""

from __future__ import annotations

import io
import warnings

import gradio as gr
from PIL import Image, UnidentifiedImageError

from arpg_core.imageio import MAX_PIXELS

NOT_AN_IMAGE = "The upload is not an image this app can read (use PNG, JPEG, WebP, GIF or BMP)."
CORRUPT = "The image is corrupt or truncated; please upload it again or use another file."


def check_header(source) -> None:
    """source: a path, bytes or None. Raises gr.Error unless it is an image within the pixel cap."""
    if source is None:
        return
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as image:
                width, height = image.size
    except UnidentifiedImageError:
        raise gr.Error(NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise gr.Error(f"The image is too large; the limit is {MAX_PIXELS:,} pixels.") from None
    except (OSError, SyntaxError, ValueError):
        raise gr.Error(CORRUPT) from None
    if width * height > MAX_PIXELS:
        raise gr.Error(f"The image is {width}×{height}; the limit is {MAX_PIXELS:,} pixels.")


def _decoded(preprocess, payload):
    try:
        return preprocess(payload)
    except gr.Error:
        raise
    except UnidentifiedImageError:
        raise gr.Error(NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError):
        raise gr.Error(CORRUPT) from None


def _path(file) -> str | None:
    return getattr(file, "path", None)


class SafeImage(gr.Image):
    is_template = True

    def preprocess(self, payload):
        if payload is not None:
            check_header(_path(payload))
        return _decoded(super().preprocess, payload)


class SafeImageEditor(gr.ImageEditor):
    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.id is not None:  # the browser sends the canvas as blobs stored under an id
            cached = self.blob_storage.get(payload.id)
            if cached is not None:
                check_header(cached.background)
        else:
            check_header(_path(payload.background))
        return _decoded(super().preprocess, payload)


class ClassPicker(gr.Dropdown):
    """The class dropdown, whose values are class indices (-1: unconditional). Gradio's dropdown
    describes every value to API clients as a string, then refuses "3"; this one describes them as
    integers, takes 3, "3" and 3.0 alike, and names the valid range when a value is not a class."""

    is_template = True

    def api_info(self) -> dict:
        return {"type": "integer", "enum": [value for _, value in self.choices]}

    def preprocess(self, payload):
        if isinstance(payload, str):
            try:
                payload = int(payload.strip())
            except ValueError:
                pass
        elif isinstance(payload, float) and payload.is_integer():
            payload = int(payload)
        values = [value for _, value in self.choices]
        if payload is not None and payload not in values:
            classes = [v for v in values if isinstance(v, int) and v >= 0]
            span = f"0–{max(classes)}" if classes else "none"
            raise gr.Error(f"Class {payload!r} is not one of this model's classes ({span}, or -1 for unconditional).")
        return super().preprocess(payload)
