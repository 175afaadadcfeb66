"""Images in, images out: generation and editing on pixels, every decoding step exposed.

Editing maps pixels to token cells, gives the sampler the kept tokens as context, and pastes the
original pixels back where nothing was asked to change. Frames carry token grids; rendering a
frame (a VQ decode plus overlays) is left to the caller so it can skip frames when behind.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageFilter

from arpg_core.classes import group_label, group_names
from arpg_core.errors import ConfigError, SamplingError
from arpg_core.imageio import MAX_PIXELS, open_image, to_pil, to_tensor
from arpg_core.loading import load_model, load_tokenizer
from arpg_core.models.arpg import ARPG
from arpg_core.sampling.editing import (
    Canvas,
    expand_canvas,
    inpaint_canvas,
    outpaint_canvas,
    padding,
    sample_windowed,
)
from arpg_core.sampling.options import SamplingOptions
from arpg_core.sampling.sampler import UNKNOWN, grid_shape, sample_steps, seeded
from arpg_core.tokenizer.vq import VQModel

MAX_CANVAS_CELLS = 48  # outpainting and expansion stop at 48 x 48 tokens per canvas side
PENDING_RGB = np.array([200, 200, 205], dtype=np.float32)
HIGHLIGHT_RGB = np.array([255, 190, 0], dtype=np.float32)


@dataclass
class Frame:
    step: int  # steps done so far (0 = the frame before the first step)
    num_steps: int
    tokens: torch.Tensor  # [B, h, w], UNKNOWN where still pending
    positions: torch.Tensor | None  # [B, n] raster positions decoded in this step
    step_map: torch.Tensor  # [B, h, w] step (1-based) at which each cell was decoded; 0 = given, -1 = pending
    images: list[Image.Image] | None = None  # the finished results, on the last frame only

    @property
    def done(self) -> bool:
        return self.images is not None


def cell_grid(width: int, height: int, grid: int) -> tuple[int, int]:
    """Token grid (rows, cols) for an image: the long side gets `grid` cells, aspect kept."""
    if width >= height:
        return max(1, round(grid * height / width)), grid
    return grid, max(1, round(grid * width / height))


def source_px_per_cell(width: int, height: int, rows: int, cols: int) -> tuple[float, float]:
    """Outpainting keeps the source's own resolution: source pixels per token cell, across and down,
    raised (aspect kept) to at least one pixel per cell, so an image smaller than its token grid still
    visibly grows instead of coming back as it was."""
    px_x, px_y = width / cols, height / rows
    lift = max(1.0, 1 / px_x, 1 / px_y)
    return px_x * lift, px_y * lift


def half_up(x: float) -> int:
    """Round halves up, as the browser's Math.round does, so the size the outpaint frame shows is the
    size made (Python's round sends halves to even: 112.5 -> 112 where the frame said 113)."""
    return math.floor(x + 0.5)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of a bool mask by `radius` pixels, in time linear in the pixels whatever the
    radius (a max filter is quadratic in it: minutes for the feather of a 12-megapixel photo)."""
    out = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return out
    for axis in (0, 1):
        n = out.shape[axis]
        sums = np.concatenate([np.zeros_like(np.take(out, [0], axis), dtype=np.int32),
                               np.cumsum(out, axis=axis, dtype=np.int32)], axis=axis)
        i = np.arange(n)
        out = (np.take(sums, np.minimum(i + radius + 1, n), axis) - np.take(sums, np.maximum(i - radius, 0), axis)) > 0
    return out


def run_to_end(frames: Iterator[Frame]) -> list[Image.Image]:
    """Consume an operation's frames; -> its finished images."""
    last = deque(frames, maxlen=1)
    return last[0].images


class Pipeline:
    def __init__(self, model: ARPG, tokenizer: VQModel, class_names: list[str] | None = None):
        if model.config.vocab_size != tokenizer.config.codebook_size:
            raise ConfigError(f"model vocab {model.config.vocab_size} != tokenizer codebook "
                              f"{tokenizer.config.codebook_size}")
        self.model, self.tokenizer = model, tokenizer
        names = class_names or getattr(model, "class_names", None)
        if names and len(names) != model.config.num_classes:
            raise ConfigError(f"{len(names)} class names for a model with {model.config.num_classes} classes")
        self.class_names = list(names) if names else [f"class {i}" for i in range(model.config.num_classes)]
        groups = getattr(model, "class_groups", None)
        if groups and len(groups) != model.config.num_classes:
            raise ConfigError(f"{len(groups)} class groups for a model with {model.config.num_classes} classes")
        self.class_groups = list(groups) if groups else None  # subclasses: the group of each class
        counts = getattr(model, "class_counts", None)
        if counts and len(counts) != model.config.num_classes:
            raise ConfigError(f"{len(counts)} class counts for a model with {model.config.num_classes} classes")
        self.class_counts = list(counts) if counts else None  # training images per class
        self.cell = tokenizer.config.downsample
        self.device = model.embeddings.weight.device
        with torch.inference_mode():  # pending cells decode as the code of a flat grey patch
            codes = tokenizer.encode(torch.zeros(1, 3, self.cell * 4, self.cell * 4, device=self.device))
        self.filler = int(codes.flatten().mode().values)

    @classmethod
    def load(cls, model_source, tokenizer_source, device: str | None = None,
             class_names: list[str] | None = None) -> Pipeline:
        """class_names: overrides the names stored in the checkpoint (published ones store none)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = load_model(model_source, device=device, dtype=dtype)
        tokenizer = load_tokenizer(tokenizer_source, device=device)  # the VQ stays in float32
        return cls(model, tokenizer, class_names)

    @property
    def grid(self) -> int:
        return self.model.config.grid_size

    @property
    def image_size(self) -> int:
        return self.grid * self.cell

    @property
    def group_names(self) -> list[str]:
        """The class groups of a model trained on subclasses ([] for others)."""
        return group_names(self.class_groups)

    def group_label(self, group: int, seed: int) -> int:
        """The class of the group-th group that `seed` draws, with the odds of its training images."""
        return group_label(self.class_groups, group, seed, self.class_counts)

    # ---- conversions -------------------------------------------------------------------------
    def label(self, label: int | None) -> int:
        if label is None or label < 0:
            return -1
        if label >= len(self.class_names):
            raise SamplingError(f"class {label} does not exist; the model has {len(self.class_names)} classes")
        return int(label)

    @torch.inference_mode()
    def encode(self, image: Image.Image, grid: tuple[int, int]) -> torch.Tensor:
        """RGB image -> tokens [rows, cols] (resized to the grid's pixel size)."""
        rows, cols = grid
        resized = image.resize((cols * self.cell, rows * self.cell), Image.LANCZOS)
        return self.tokenizer.encode(to_tensor(resized)[None].to(self.device))[0].cpu()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        """tokens [B, h, w] (no UNKNOWN) -> RGB images."""
        images = self.tokenizer.decode(tokens.to(self.device))
        return [to_pil(x) for x in images]

    @torch.inference_mode()
    def render(self, tokens: torch.Tensor, highlight: torch.Tensor | None = None, scale: int = 1) -> Image.Image:
        """A partial grid [B, h, w] as one strip: pending cells greyed, `highlight` cells tinted."""
        b, h, w = tokens.shape
        filled = tokens.where(tokens != UNKNOWN, self.filler)
        pixels = np.stack([np.asarray(im, dtype=np.float32) for im in self.decode(filled)])  # [B,H,W,3]
        # cells -> pixels: [B, h, w] -> [B, H, W, 1]
        up = lambda m: m.repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2).numpy()[..., None]
        pending = up(tokens == UNKNOWN)
        pixels = np.where(pending, 0.25 * pixels + 0.75 * PENDING_RGB, pixels)
        if highlight is not None and highlight.numel():
            marked = torch.zeros(b, h * w, dtype=torch.bool).scatter_(1, highlight.cpu(), True).view(b, h, w)
            pixels = np.where(up(marked), 0.45 * pixels + 0.55 * HIGHLIGHT_RGB, pixels)
        gap = np.full((h * self.cell, 1, 3), 255.0, dtype=np.float32)
        strip = np.concatenate([part for im in pixels for part in (im, gap)][:-1], axis=1)
        image = Image.fromarray(strip.round().astype(np.uint8))
        return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image

    def order_map(self, step_map: torch.Tensor, scale: int = 1) -> Image.Image:
        """Heat map [h, w] of the step at which each cell was decoded (given cells grey)."""
        steps = step_map.float()
        top = max(1.0, float(steps.max()))
        t = (steps / top).clamp(0, 1).numpy()[..., None]
        early, late = np.array([40, 30, 120.0]), np.array([250, 230, 60.0])  # indigo -> yellow
        rgb = early + (late - early) * t
        rgb = np.where(step_map.numpy()[..., None] <= 0, PENDING_RGB, rgb)
        cells = Image.fromarray(rgb.round().astype(np.uint8))
        size = self.cell * scale
        return cells.resize((cells.width * size, cells.height * size), Image.NEAREST)

    # ---- the loop shared by every operation ----------------------------------------------------
    def _frames(self, events, start: torch.Tensor, finish) -> Iterator[Frame]:
        step_map = torch.where(start == UNKNOWN, -1, 0)
        yield Frame(0, 0, start.clone(), None, step_map.clone())
        frame = None
        for event in events:
            b = event.tokens.shape[0]
            step_map.view(b, -1).scatter_(1, event.positions.cpu(), event.step + 1)
            tokens = event.tokens.cpu()
            frame = Frame(event.step + 1, event.num_steps, tokens, event.positions.cpu(), step_map.clone(),
                          finish(tokens) if event.done else None)
            yield frame
        if frame is not None and frame.images is None:  # the plan ended early: still deliver results
            frame.images = finish(frame.tokens)
            yield frame

    def _sample(self, canvas: Canvas, labels: list[int], seeds: list[int], options: SamplingOptions,
                windowed: bool) -> Iterator:
        gens = [seeded(s) for s in seeds]
        kwargs = dict(generator=gens, options=options)
        if windowed:
            return sample_windowed(self.model, labels, canvas, **kwargs)
        if canvas.known_mask.any():
            kwargs.update(known_tokens=canvas.tokens.clamp_min(0), known_mask=canvas.known_mask)
        return sample_steps(self.model, labels, grid=canvas.grid, **kwargs)

    # ---- operations ------------------------------------------------------------------------------
    def generate(self, labels: list[int], seed: int = 0, options: SamplingOptions | None = None,
                 grid: tuple[int, int] | None = None, seeds: list[int] | None = None) -> Iterator[Frame]:
        """One image per label; image i uses seed + i (or seeds[i]) whatever its place in the batch (a
        different batch size can still flip a rare token through float rounding)."""
        labels = [self.label(c) for c in labels]
        seeds = seeds if seeds is not None else [seed + i for i in range(len(labels))]
        if len(seeds) != len(labels):
            raise SamplingError(f"{len(seeds)} seeds for {len(labels)} images")
        grid = (self.grid, self.grid) if grid is None else grid_shape(grid)
        self._check_grid(*grid)
        canvas = Canvas(torch.full(grid, UNKNOWN), torch.zeros(grid, dtype=torch.bool))
        events = self._sample(canvas, labels, seeds, options or SamplingOptions(), windowed=False)
        start = torch.full((len(labels), *grid), UNKNOWN)
        return self._frames(events, start, self.decode)

    def inpaint(self, image, mask: np.ndarray, label: int | None, seed: int = 0,
                options: SamplingOptions | None = None, feather: int | None = None) -> Iterator[Frame]:
        """Regenerate the masked pixels (mask [H, W] bool, True = change). The rest stays as given,
        except a rim of `feather` pixels (default: half a token cell, at least 2) just outside the mask, which is
        blended from the result into the original so the seam does not show."""
        image = open_image(image)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise SamplingError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                f"{image.width}x{image.height}")
        if not mask.any():
            raise SamplingError("the mask is empty: paint over the region to regenerate")
        grid = cell_grid(image.width, image.height, self.grid)
        # Float box average: any painted pixel marks its cell (uint8 rounding lost small marks on big images).
        cells = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(grid[::-1], Image.BOX)) > 1e-6
        cells = _dilate(cells, 1)  # one cell of margin, so the new content has no seam at the edge
        canvas = inpaint_canvas(self.encode(image, grid), torch.from_numpy(cells))
        px = image.width / (grid[1] * self.cell)
        rim = feather if feather is not None else max(2, round(self.cell * px / 2))
        alpha = self._feather(mask, rim)

        def finish(tokens):
            made = self.decode(tokens)[0].resize(image.size, Image.LANCZOS)
            out = np.asarray(made, np.float32) * alpha + np.asarray(image, np.float32) * (1 - alpha)
            return [Image.fromarray(out.round().astype(np.uint8))]

        options = options or SamplingOptions()
        todo = int((~canvas.known_mask).sum())
        # A small grid painted over whole has fewer tokens than steps (partial masks scale their steps).
        if not canvas.known_mask.any() and isinstance(options.schedule, str) and options.steps > todo:
            options = replace(options, steps=todo)
        events = self._sample(canvas, [self.label(label)], [seed], options, windowed=False)
        return self._frames(events, canvas.tokens[None], finish)

    @staticmethod
    def _feather(mask: np.ndarray, rim: int) -> np.ndarray:
        """[H, W, 1] weights: 1 on the mask, fading to 0 within `rim` pixels outside it."""
        grown = _dilate(mask, rim)
        soft = Image.fromarray(grown.astype(np.uint8) * 255).filter(ImageFilter.BoxBlur(max(1, rim // 2)))
        alpha = np.asarray(soft, np.float32) / 255 * grown  # nothing outside the grown mask
        return np.maximum(alpha, mask)[..., None]

    def outpaint(self, image, pad: tuple[int, int, int, int], label: int | None, seed: int = 0,
                 options: SamplingOptions | None = None, windowed: bool | None = None) -> Iterator[Frame]:
        """Grow the canvas by pad = (top, right, bottom, left) token cells; the original is kept as is,
        at its own resolution, unless the result would pass MAX_PIXELS: then all of it is scaled down
        to fit, the original with it."""
        image = open_image(image)
        grid = cell_grid(image.width, image.height, self.grid)
        top, right, bottom, left = padding(pad)
        rows, cols = top + grid[0] + bottom, left + grid[1] + right
        self._check_grid(rows, cols)  # before any work or memory
        canvas = outpaint_canvas(self.encode(image, grid), (top, right, bottom, left))
        c = self.cell
        px_x, px_y = source_px_per_cell(image.width, image.height, *grid)  # as the app's outpaint frame
        size = (half_up(cols * px_x), half_up(rows * px_y))
        fx, fy = px_x / c, px_y / c  # output pixels per decoded pixel
        if size[0] * size[1] > MAX_PIXELS:
            shrink = (MAX_PIXELS / (size[0] * size[1])) ** 0.5
            size = (max(1, int(size[0] * shrink)), max(1, int(size[1] * shrink)))
            fx, fy = size[0] / (cols * c), size[1] / (rows * c)
        # The original's edges, rounded as cumulative positions: with no padding on a side it meets that edge.
        at = (half_up(left * c * fx), half_up(top * c * fy))
        end = (half_up((left + grid[1]) * c * fx), half_up((top + grid[0]) * c * fy))
        box = (end[0] - at[0], end[1] - at[1])
        kept = image if box == image.size else image.resize(box, Image.LANCZOS)

        def finish(tokens):
            out = self.decode(tokens)[0].resize(size, Image.LANCZOS)
            out.paste(kept, at)
            return [out]

        big = rows > self.grid or cols > self.grid
        events = self._sample(canvas, [self.label(label)], [seed], options or SamplingOptions(),
                              windowed=big if windowed is None else windowed)
        return self._frames(events, canvas.tokens[None], finish)

    def expand(self, image, label: int | None, seed: int = 0, options: SamplingOptions | None = None,
               windowed: bool = False) -> Iterator[Frame]:
        """Twice the token grid in each direction; the source tokens sit on the even cells.
        By default one pass over the whole grid with positions interpolated into the trained range
        (`options.rope_interpolation`); `windowed` decodes overlapping windows of the trained grid
        instead. `python -m arpg_core.expansion_eval` compares the two (see the README)."""
        image = open_image(image)
        grid = cell_grid(image.width, image.height, self.grid)
        self._check_grid(2 * grid[0], 2 * grid[1])
        canvas = expand_canvas(self.encode(image, grid))
        aspect = image.width / image.height

        def finish(tokens):  # whole cells round the proportions: give the source's back
            made = self.decode(tokens)[0]
            w, h = made.size
            size = (w, max(1, round(w / aspect))) if aspect >= 1 else (max(1, round(h * aspect)), h)
            return [made if size == made.size else made.resize(size, Image.LANCZOS)]

        events = self._sample(canvas, [self.label(label)], [seed], options or SamplingOptions(), windowed)
        return self._frames(events, canvas.tokens[None], finish)

    @staticmethod
    def _check_grid(rows: int, cols: int) -> None:
        if max(rows, cols) > MAX_CANVAS_CELLS:
            raise SamplingError(f"the canvas would be {cols}x{rows} tokens; the limit is "
                                f"{MAX_CANVAS_CELLS} per side")
