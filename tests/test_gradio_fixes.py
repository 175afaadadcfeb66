"""The atomic picture cache (app/gradio_fixes.py): a picture written while another request reads it
is never seen half-written, and the app installs the writer before it serves anything."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from gradio import processing_utils
from PIL import Image

from app import gradio_fixes


def _picture(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _short_reads(save, folder: Path, reads: int = 200, limit_s: float = 20) -> tuple[int, int, int]:
    """One thread writes the same picture again and again (removed first, as `delete_cache` would, so
    every write is a fresh one) while another reads it, until it has read the file `reads` times or
    `limit_s` passed: -> (whole reads, short reads, writes). A writer's error is raised here."""
    picture = _picture()
    path = Path(save(picture, str(folder), format="png"))
    size = path.stat().st_size
    stop = threading.Event()
    counts = {"whole": 0, "short": 0, "writes": 0}
    errors = []

    def write():
        try:
            while not stop.is_set():
                path.unlink(missing_ok=True)
                save(picture, str(folder), format="png")
                counts["writes"] += 1
        except Exception as exc:  # a thread's exception is only printed: hand it to the test
            errors.append(exc)
            stop.set()

    def read():
        while not stop.is_set():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            counts["whole" if len(data) == size else "short"] += 1

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + limit_s
    while counts["whole"] + counts["short"] < reads and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return counts["whole"], counts["short"], counts["writes"]


def test_a_picture_rewritten_while_read_is_never_read_half_written(tmp_path):
    whole, short, writes = _short_reads(gradio_fixes.save_pil_to_cache, tmp_path)
    assert whole > 0, "the reader never saw the file"
    assert writes >= 10, f"only {writes} writes overlapped the reads: the race was not exercised"
    assert short == 0, f"{short} of {whole + short} reads got a half-written file"
    assert not list(tmp_path.rglob(".image.*")), "a staging file was left behind"


def test_same_paths_as_gradio_and_an_existing_file_kept(tmp_path):
    picture = _picture(1)
    path = Path(gradio_fixes.save_pil_to_cache(picture, str(tmp_path), format="png"))
    # Gradio's routes serve the cache by these paths: the hash of the bytes, then the name
    assert path.name == "image.png"
    assert path.parent.name == processing_utils.hash_bytes(processing_utils.encode_pil_to_bytes(picture, "png"))
    inode = path.stat().st_ino
    assert gradio_fixes.save_pil_to_cache(picture, str(tmp_path), format="png") == str(path)
    assert path.stat().st_ino == inode  # not rewritten
    path.write_bytes(path.read_bytes()[:100])  # a truncated leftover is replaced, whole
    gradio_fixes.save_pil_to_cache(picture, str(tmp_path), format="png")
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(picture))


def test_the_app_installs_it():
    from app.ui import create_demo

    def gradios(img, cache_dir, name="image", format="webp"):  # noqa: A002 (the stand-in for Gradio's own)
        raise AssertionError("not replaced")

    original, processing_utils.save_pil_to_cache = processing_utils.save_pil_to_cache, gradios
    try:
        create_demo()
        assert processing_utils.save_pil_to_cache is gradio_fixes.save_pil_to_cache
    finally:
        processing_utils.save_pil_to_cache = original
