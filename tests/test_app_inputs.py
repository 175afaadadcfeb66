"""The app's input components on their own: the inpainting editor's store of painted canvases, and
the message for an upload Gradio's cache has already deleted."""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from app import inputs
from app.inputs import SafeImageEditor, check_header


def _png(colour, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _part(key: str, kind: str, data: bytes, index=None, session="s"):
    """What Gradio hands accept_blobs for one part of an uploaded canvas (form fields are strings)."""
    fields = {"id": key, "type": kind, "index": "null" if index is None else str(index), "session_hash": session}
    return SimpleNamespace(data=fields, files=[(f"{kind}.png", data)])


def _upload(editor: SafeImageEditor, key: str, session: str = "s", colour=(255, 0, 0, 255)) -> None:
    """A canvas's three parts at once, on threads, as the browser sends them (Promise.all)."""
    parts = [_part(key, "background", _png(colour), session=session),
             _part(key, "composite", _png(colour), session=session),
             _part(key, "layer", _png((0, 0, 0, 200)), index=0, session=session)]
    threads = [threading.Thread(target=editor.accept_blobs, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class SlowStore(dict):
    """A store whose reads take a while, so the three parts' read-modify-writes overlap."""

    def get(self, *args):
        value = super().get(*args)
        time.sleep(0.02)  # after the read: another part reads the same (missing) canvas meanwhile
        return value


def _submitted(key: str):
    return SimpleNamespace(id=key, background=None, layers=[], composite=None,
                           model_copy=lambda update: SimpleNamespace(**{**_submitted(key).__dict__, **update}))


def test_the_parts_of_a_canvas_are_merged_and_a_run_reads_them():
    editor = SafeImageEditor(type="pil", image_mode="RGBA")
    editor.blob_storage = SlowStore()
    for round_ in range(3):  # without the lock, each round lost two of its three parts
        _upload(editor, f"stroke{round_}")
        stored = editor.blob_storage[f"stroke{round_}"]
        assert stored.background and stored.composite and stored.layers[0], f"a part was lost in round {round_}"
    value = editor.preprocess(_submitted("stroke2"))
    assert value["background"].size == (8, 8) and len(value["layers"]) == 1
    assert "stroke2" not in editor.blob_storage and not any(k.startswith("run:") for k in editor.blob_storage)
    with pytest.raises(gr.Error, match="no longer on the server"):  # a canvas already run, or forgotten
        editor.preprocess(_submitted("stroke2"))


def test_a_layer_is_checked_like_the_background(monkeypatch):
    """A layer or composite can be a decompression bomb as well as the background; a layer index past
    the editor's few layers would allocate a list that long."""
    editor = SafeImageEditor(type="pil", image_mode="RGBA")
    editor.accept_blobs(_part("huge", "layer", _png((0, 0, 0, 200)), index=10**9))
    editor.accept_blobs(_part("huge", "layer", _png((0, 0, 0, 200)), index="x"))
    assert "huge" not in editor.blob_storage
    editor.accept_blobs(_part("big", "background", _png((255, 0, 0, 255), size=(4, 4))))
    editor.accept_blobs(_part("big", "layer", _png((0, 0, 0, 200), size=(8, 8)), index=0))
    monkeypatch.setattr(inputs, "MAX_PIXELS", 32)  # the 4x4 background passes, the 8x8 layer does not
    with pytest.raises(gr.Error, match="8×8; the limit is 32 pixels"):
        editor.preprocess(_submitted("big"))


def test_old_canvases_are_forgotten(monkeypatch):
    editor = SafeImageEditor(type="pil", image_mode="RGBA")
    clock = [1000.0]
    monkeypatch.setattr(inputs.time, "monotonic", lambda: clock[0])
    for stroke in range(4):  # strokes never run: before, every one stayed for the life of the server
        _upload(editor, f"a{stroke}", session="A")
        _upload(editor, f"b{stroke}", session="B")
        clock[0] += 60
    assert list(editor.blob_storage) == ["a2", "b2", "a3", "b3"]  # each session keeps its latest two
    clock[0] += inputs.CANVAS_TTL_S - 90  # a2, b2 are now older than the limit; a3, b3 are not
    _upload(editor, "c0", session="C")
    assert list(editor.blob_storage) == ["a3", "b3", "c0"]
    canvas = 2 * len(_png((255, 0, 0, 255))) + len(_png((0, 0, 0, 200)))
    monkeypatch.setattr(inputs, "CANVAS_MAX_BYTES", 2 * canvas)  # room for two canvases in all
    _upload(editor, "c1", session="C")
    assert list(editor.blob_storage) == ["c0", "c1"]


def test_a_deleted_upload_says_it_has_expired(tmp_path):
    gone = tmp_path / "gone.png"
    with pytest.raises(gr.Error, match="no longer on the server"):
        check_header(str(gone))
