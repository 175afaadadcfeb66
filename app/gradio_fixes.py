"""A fix to Gradio's picture cache, installed when the app builds its UI.

Gradio caches every picture it sends or receives as a PIL image or an array under a hash of its
encoded bytes, and writes that file in place every time. Two requests with the same picture at
once (the blank first frame of every generation, two people on the default seed, an example picked
by both) then rewrite one file while it is being served or read: a client's download was cut off
after 0 of 8,439 bytes, and an input read in that window is a truncated image. Measured with one
thread rewriting a 64 px PNG and one reading it: three reads in four came back short.

Here the bytes go to a temporary name in the same folder and are renamed into place, so a reader
gets a whole file, old or new; a file already there (same hash, same name: the same bytes) is kept
and touched, as Gradio's copy of *files* into the cache already does.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from pathlib import Path

from gradio import processing_utils

log = logging.getLogger("arpg.app")

_EXPECTED = ["img", "cache_dir", "name", "format"]


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:  # noqa: A002
    """Gradio's `processing_utils.save_pil_to_cache`, same arguments and paths, written atomically."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{name}.{format}").resolve()
    try:
        if path.stat().st_size == len(data):
            os.utime(path)  # `delete_cache` ages files by ctime: a picture handed out again stays
            return str(path)
    except OSError:  # not there, or deleted by `delete_cache` just now: written below
        pass
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(staging, 0o644)  # mkstemp's 0600 would differ from Gradio's own files
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(path)


def install() -> bool:
    """Put the atomic writer in place of Gradio's (callers reach it through the module, so one
    assignment covers images, galleries, editors and arrays). Returns whether it is installed; a
    Gradio whose function takes other arguments is left alone, with a warning."""
    current = processing_utils.save_pil_to_cache
    if current is save_pil_to_cache:
        return True
    if list(inspect.signature(current).parameters) != _EXPECTED:
        log.warning("gradio's save_pil_to_cache changed; its cache writes are left unpatched")
        return False
    processing_utils.save_pil_to_cache = save_pil_to_cache
    return True
