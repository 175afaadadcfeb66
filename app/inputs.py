"""Image inputs that refuse bad uploads with a clear message before Gradio decodes them.

`gr.Image` and `gr.ImageEditor` open uploads with Pillow during preprocessing, so a file that is not
an image, a truncated one or a decompression bomb would fail there with Pillow's own exception.
These subclasses read the header first (size against the pixel cap, bombs as errors) and turn any
decoding failure into a `gr.Error`. The frontend is the stock one (`is_template`).

The editor also bounds what Gradio keeps of its canvases: the browser uploads the whole canvas
(background, layers, composite) after every stroke under a new id, and Gradio drops only the id a
run submits, so every stroke of every session stayed in memory for the life of the server. Here a
session keeps its latest two.
"""

from __future__ import annotations

import io
import threading
import time
import warnings

import gradio as gr
from gradio.components.base import server
from gradio.components.image_editor import EditorDataBlobs
from PIL import Image, UnidentifiedImageError

from arpg_core.imageio import MAX_PIXELS

NOT_AN_IMAGE = "The upload is not an image this app can read (use PNG, JPEG, WebP, GIF or BMP)."
CORRUPT = "The image is corrupt or truncated; please upload it again or use another file."
TOO_LARGE = f"The image is too large; the limit is {MAX_PIXELS:,} pixels."
EXPIRED = "The image is no longer on the server (uploads are kept for an hour); please upload it again."
CANVAS_GONE = ("The painted canvas is no longer on the server (it is kept for an hour); paint a stroke "
               "again, then run.")
CANVASES_PER_SESSION = 2  # the one a run may be about to read, and the newest
CANVAS_TTL_S = 3600  # a canvas untouched this long is forgotten (a closed tab's; Gradio keeps its State as long)
CANVAS_MAX_BYTES = 1024 * 2**20  # all sessions' canvases together; the oldest go first
MAX_LAYERS = 16  # brush layers per canvas: an upload naming a higher index is dropped
_CANVAS_LOCK = threading.Lock()  # module-level: a lock on the component would break Gradio's deep copies


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
    except FileNotFoundError:  # Gradio's cache deleted it (delete_cache ages files from their upload)
        raise gr.Error(EXPIRED) from None
    except UnidentifiedImageError:
        raise gr.Error(NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise gr.Error(TOO_LARGE) from None
    except (OSError, SyntaxError, ValueError):
        raise gr.Error(CORRUPT) from None
    if width * height > MAX_PIXELS:
        raise gr.Error(f"The image is {width}×{height}; the limit is {MAX_PIXELS:,} pixels.")


def _decoded(preprocess, payload):
    try:
        return preprocess(payload)
    except gr.Error:
        raise
    except FileNotFoundError:
        raise gr.Error(EXPIRED) from None
    except UnidentifiedImageError:
        raise gr.Error(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError:  # not an OSError: Pillow's own cap, passed by a layer
        raise gr.Error(TOO_LARGE) from None
    except (OSError, SyntaxError, ValueError):
        raise gr.Error(CORRUPT) from None


def check_parts(background, layers, composite) -> None:
    """Every part of an editor value (paths or bytes) against the pixel cap, before Gradio decodes
    them all: a layer or composite is as able to be a decompression bomb as the background."""
    for part in (background, composite, *(layers or [])):
        check_header(part)


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

    @server
    def accept_blobs(self, data):
        """One part (background, composite or a layer) of a canvas the browser uploads. The parts of
        one canvas arrive at once, on worker threads: they are merged under a lock (Gradio's
        unlocked read-modify-write could drop one, and the run then saw no image or no mask). Each
        session keeps its CANVASES_PER_SESSION latest canvases; canvases not touched for CANVAS_TTL_S
        (a closed tab's), or beyond CANVAS_MAX_BYTES in all, are forgotten, oldest first."""
        kind, key, raw = data.data["type"], data.data["id"], data.data.get("index")
        try:
            index = int(raw) if raw not in (None, "", "null") else None
        except (TypeError, ValueError):
            return
        if kind == "layer" and (index is None or not 0 <= index < MAX_LAYERS):
            return  # the editor numbers its few layers from 0; anything else would only cost memory
        file = data.files[0][1]
        now = time.monotonic()
        with _CANVAS_LOCK:
            current = self.blob_storage.get(key) or EditorDataBlobs(background=None, layers=[], composite=None)
            if kind == "layer" and index is not None:
                current.layers.extend([None] * (index + 1 - len(current.layers)))
                current.layers[index] = file
            elif kind == "background":
                current.background = file
            elif kind == "composite":
                current.composite = file
            self.blob_storage[key] = current
            canvases = self._canvases()
            _, _, size = canvases.pop(key, (None, now, 0))  # re-inserted: the dict runs oldest to newest
            canvases[key] = (data.data.get("session_hash"), now, size + len(file))
            self._forget_old_canvases(canvases, now)

    def _canvases(self) -> dict[str, tuple[str | None, float, int]]:
        """id -> (session, last upload, bytes) of the canvases stored and not yet run, oldest first."""
        return self.__dict__.setdefault("_canvas_records", {})

    def _forget_old_canvases(self, canvases: dict, now: float) -> None:
        for key in [k for k in canvases if k not in self.blob_storage]:  # run (Gradio popped them)
            del canvases[key]
        newest_of: dict = {}
        for key, (session, _, _) in reversed(canvases.items()):
            newest_of.setdefault(session, []).append(key)
        stale = {key for keys in newest_of.values() for key in keys[CANVASES_PER_SESSION:]}
        stale |= {key for key, (_, when, _) in canvases.items() if now - when > CANVAS_TTL_S}
        total = sum(size for key, (_, _, size) in canvases.items() if key not in stale)
        for key, (_, _, size) in canvases.items():  # oldest first, while all of them are too many bytes
            if total <= CANVAS_MAX_BYTES:
                break
            if key not in stale:
                stale.add(key)
                total -= size
        for key in stale:
            self.blob_storage.pop(key, None)
            del canvases[key]

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.id is None:  # an API client or a value set by the server: paths
            check_parts(_path(payload.background), [_path(layer) for layer in payload.layers or []],
                        _path(payload.composite))
            return _decoded(super().preprocess, payload)
        # The browser's canvas, stored under an id: taken out of the store under the lock (a cleanup
        # running meanwhile must not remove it halfway through Gradio's preprocess) and handed to
        # Gradio under a key no cleanup knows, which Gradio removes once read.
        with _CANVAS_LOCK:
            cached = self.blob_storage.pop(payload.id, None)
            self._canvases().pop(payload.id, None)
            if cached is None:
                raise gr.Error(CANVAS_GONE)
            private = f"run:{payload.id}"
            self.blob_storage[private] = cached
        try:
            check_parts(cached.background, cached.layers, cached.composite)
            return _decoded(super().preprocess, payload.model_copy(update={"id": private}))
        finally:
            self.blob_storage.pop(private, None)


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
            groups = [v for v in values if isinstance(v, int) and v < -1]
            span += f", {max(groups)} to {min(groups)} for a group" if groups else ""
            raise gr.Error(f"Class {payload!r} is not one of this model's classes ({span}, or -1 for unconditional).")
        return super().preprocess(payload)
