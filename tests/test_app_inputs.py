"""The app's input components on their own: the inpainting editor's store of painted canvases, and
the message for an upload Gradio's cache has already deleted."""

from __future__ import annotations

import io
import threading
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


def _part(key: str, kind: str, data: bytes, index=None):
    """What Gradio hands accept_blobs for one part of an uploaded canvas (form fields are strings)."""
    return SimpleNamespace(data={"id": key, "type": kind, "index": "null" if index is None else str(index)},
                           files=[(f"{kind}.png", data)])


def _upload(editor: SafeImageEditor, key: str, colour=(255, 0, 0, 255)) -> None:
    """A canvas's three parts at once, on threads, as the browser sends them (Promise.all)."""
    parts = [_part(key, "background", _png(colour)), _part(key, "composite", _png(colour)),
             _part(key, "layer", _png((0, 0, 0, 200)), index=0)]
    threads = [threading.Thread(target=editor.accept_blobs, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_the_parts_of_a_canvas_are_merged_and_a_run_reads_them():
    editor = SafeImageEditor(type="pil", image_mode="RGBA")
    for round_ in range(20):  # parts arriving together must never overwrite each other
        _upload(editor, f"stroke{round_}")
        stored = editor.blob_storage[f"stroke{round_}"]
        assert stored.background and stored.composite and stored.layers[0], f"a part was lost in round {round_}"
    value = editor.preprocess(SimpleNamespace(id="stroke19", background=None, layers=[], composite=None))
    assert value["background"].size == (8, 8) and len(value["layers"]) == 1
    assert "stroke19" not in editor.blob_storage  # a run's canvas is removed once read (Gradio's rule)


def test_old_canvases_are_forgotten(monkeypatch):
    editor = SafeImageEditor(type="pil", image_mode="RGBA")
    clock = [1000.0]
    monkeypatch.setattr(inputs.time, "monotonic", lambda: clock[0])
    for stroke in range(5):  # strokes never run: before, every one stayed for the life of the server
        _upload(editor, f"s{stroke}")
        clock[0] += 60
    assert list(editor.blob_storage) == ["s0", "s1", "s2", "s3", "s4"]
    clock[0] += inputs.CANVAS_TTL_S - 150  # s0..s2 are now older than the limit; s3 and s4 are not
    _upload(editor, "s5")
    assert list(editor.blob_storage) == ["s3", "s4", "s5"]
    canvas = 2 * len(_png((255, 0, 0, 255))) + len(_png((0, 0, 0, 200)))
    monkeypatch.setattr(inputs, "CANVAS_MAX_BYTES", 2 * canvas)  # room for two canvases
    _upload(editor, "s6")
    assert list(editor.blob_storage) == ["s5", "s6"]


def test_a_deleted_upload_says_it_has_expired(tmp_path):
    gone = tmp_path / "gone.png"
    with pytest.raises(gr.Error, match="no longer on the server"):
        check_header(str(gone))
