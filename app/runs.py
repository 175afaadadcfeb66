"""What a run leaves behind, and the picture conversions around it.

The token grids of every step are kept in a `Run`, so the step slider can re-render any step later
without sampling again; the frames as streamed, with their timing, become the GIF.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arpg_core.pipeline import Frame, Pipeline

DISPLAY_PX = 256  # live frames are scaled by whole pixels to about this long side
KEEP_GIFS = 16
MAX_SHOWN = 240  # frames kept for the GIF, and at most MAX_SHOWN_PIXELS of them (40 MB as palette images):
MAX_SHOWN_PIXELS = 40_000_000  # a long run on a big canvas would otherwise hold hundreds of MB a session


@dataclass
class Run:
    """One finished (or stopped) run: enough to re-render any of its steps, and the frames shown."""

    model: str
    scale: int
    tokens: list[torch.Tensor] = field(default_factory=list)  # [B, h, w] int16 per step, UNKNOWN = pending
    positions: list[torch.Tensor | None] = field(default_factory=list)  # [B, n] decoded at that step
    step_map: torch.Tensor | None = None  # [B, h, w] of the last frame
    total: int = 0  # the steps the run was to take
    done: bool = False  # it reached the end (not stopped, not failed)
    failed: bool = False  # an error ended it
    shown: list[tuple[float, Image.Image]] | None = field(default_factory=list)  # (time, frame) as streamed

    @property
    def num_steps(self) -> int:
        return len(self.tokens) - 1

    def keep_shown(self, when: float, image: Image.Image) -> None:
        """Keep a streamed frame for the GIF. Past MAX_SHOWN every other one is dropped (the first and the
        latest stay); the GIF still plays in real time, each frame lasting until the next one kept."""
        if self.shown is None:
            return
        # palette frames, as the GIF stores them: a third of RGB, for a State Gradio keeps an hour
        # after its tab closes
        self.shown.append((when, image.quantize(255, method=Image.Quantize.FASTOCTREE)))
        if len(self.shown) > max(2, min(MAX_SHOWN, MAX_SHOWN_PIXELS // (image.width * image.height))):
            self.shown = self.shown[:-1:2] + self.shown[-1:]

    def add(self, frame: Frame) -> None:
        if len(self.tokens) > frame.step:  # the same step again (results delivered after an early end)
            del self.tokens[frame.step :], self.positions[frame.step :]
        # int16 holds every code of a 16,384-entry codebook and UNKNOWN, at a quarter of int64: a State
        # Gradio keeps an hour after its tab closes holds every step of a 48x48 canvas
        self.tokens.append(frame.tokens.to(torch.int16) if frame.tokens.max() < 2**15 else frame.tokens)
        self.positions.append(frame.positions)
        self.step_map = frame.step_map
        self.total, self.done = frame.num_steps, frame.done


def counter_html(step: int, total: int, note: str = "") -> str:
    pct = 100 * step / max(total, 1)
    text = f"Step <b>{step}</b> / {total}" if total else "Starting…"
    return (
        f'<div class="arpg-counter"><span>{text}</span><span class="note">{note}</span>'
        f'<div class="bar"><i style="width:{pct:.1f}%"></i></div></div>'
    )


def display_scale(pipeline: Pipeline, grid_hw: tuple[int, int]) -> int:
    return max(1, DISPLAY_PX // (max(grid_hw) * pipeline.cell))


def mask_from_layers(layers: list, size: tuple[int, int]) -> np.ndarray:
    """[H, W] bool: every pixel any brush layer painted, read from the layers' alpha (not colour). A
    layer opaque everywhere is refused: it is a black-and-white mask picture sent as a layer (an API
    client's), whose alpha would mark the whole image."""
    mask = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        layer = layer if isinstance(layer, Image.Image) else Image.open(layer)
        if "A" not in layer.getbands():
            continue
        alpha = layer.getchannel("A")
        if alpha.getextrema()[0] == 255:
            raise ValueError("A brush layer is opaque everywhere, which would regenerate the whole image: a layer "
                             "marks the region by its painted pixels on a clear (transparent) background.")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.NEAREST)
        mask |= np.asarray(alpha) > 0
    return mask


def side_by_side(images: list[Image.Image], gap: int = 4) -> Image.Image:
    """One strip, like the live frames, so several order maps show at the same scale."""
    strip = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), images[0].height), "white")
    for i, image in enumerate(images):
        strip.paste(image, (sum(im.width + gap for im in images[:i]), 0))
    return strip


def fingerprint(image: Image.Image) -> tuple[tuple[int, int], bytes]:
    """The size and a 32x32 RGB thumbnail: enough to tell one picture from another, small enough to
    keep in a session (a path would not do: Gradio's cache deletes its files after an hour)."""
    return image.size, image.convert("RGB").resize((32, 32), Image.Resampling.BOX).tobytes()


def same_picture(image: Image.Image, print_: tuple[tuple[int, int], bytes]) -> bool:
    """Is `image` the picture `print_` (a fingerprint) was taken of, up to re-encoding?"""
    size, thumb = fingerprint(image)
    if size != tuple(print_[0]):
        return False
    diff = np.frombuffer(thumb, np.uint8).astype(np.int16) - np.frombuffer(print_[1], np.uint8).astype(np.int16)
    return float(np.abs(diff).mean()) < 2


def write_gif(run: Run, folder: Path) -> str | None:
    """The frames as they were streamed, with their real timing; the result held at the end."""
    shown, run.shown = run.shown or [], None  # written once; the pictures are not kept
    if not shown:
        return None
    times = [t for t, _ in shown]
    durations = [max(40, round(1000 * (b - a))) for a, b in zip(times, times[1:], strict=False)] + [1500]
    frames = [image for _, image in shown]
    for old in sorted(folder.glob("*.gif"))[:-KEEP_GIFS]:  # keep the folder small
        old.unlink(missing_ok=True)
    path = folder / f"arpg-{time.time_ns()}.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return str(path)
