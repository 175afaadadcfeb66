"""Event handlers: each one is a call into `arpg_core.Pipeline` plus conversion to PIL.

Runs are generators that yield a rendered frame per decoding step (throttled), then the results;
what a run leaves behind for the replay and the GIF is an `app.runs.Run`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from app.models import ModelCache
from app.outpaint_frame import frame_value
from app.runs import (
    Run,
    counter_html,
    display_scale,
    mask_from_layers,
    same_picture,
    side_by_side,
    write_gif,
)
from arpg_core.classes import group_members
from arpg_core.errors import ARPGError, HubUnavailableError
from arpg_core.imageio import open_image
from arpg_core.pipeline import Frame, Pipeline
from arpg_core.sampling.options import SamplingOptions

log = logging.getLogger("arpg.app")

FRAME_INTERVAL = 0.08  # seconds between rendered frames; the first and the last always go out
UNCONDITIONAL = -1
FIRST_GROUP = -2  # a model of subclasses: group g is the choice FIRST_GROUP - g ("any of the group's classes")
MAX_IMAGES = 4  # per generate call

try:  # on a ZeroGPU Space the runs borrow a GPU; elsewhere this is a no-op
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn):
        return fn


def user_errors(fn):
    """Turn the errors a user can cause into a plain `gr.Error` message (never a traceback)."""

    def convert(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, (ARPGError, ValueError)):
            return gr.Error(str(exc))
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return gr.Error("out of GPU memory: try fewer images or a smaller canvas")
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"something went wrong ({type(exc).__name__}); the details are in the server log")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from None

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise convert(exc) from None

    return call


def sampling_options(steps, cfg_scale, cfg_schedule, schedule, temperature, top_k, top_p, order) -> SamplingOptions:
    top_k = int(top_k) if top_k else None  # 0 = off
    top_p = float(top_p) if top_p is not None and float(top_p) < 1 else None  # 1 = off
    return SamplingOptions(
        steps=int(steps),
        schedule=schedule,
        cfg_scale=float(cfg_scale),
        cfg_schedule=cfg_schedule,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        order=order,
    )


class Studio:
    """Holds the loaded pipelines; every handler is a call into one of them."""

    def __init__(self, cache: ModelCache):
        self.cache = cache
        self.gif_dir = Path(tempfile.mkdtemp(prefix="arpg-gif-"))
        self._blanks: dict[tuple, Image.Image] = {}  # the all-pending first frame, per model and shape

    # ---- models and classes ----------------------------------------------------------------
    @property
    def default_model(self) -> str:
        return self.cache.default

    def pipeline(self, model: str | None) -> Pipeline:
        if not self.cache.is_loaded(model or self.default_model):
            # another session's switch evicted it (one published model is kept at a time): say why it waits
            gr.Info(f"Loading {model or self.default_model}…")
        return self.cache.get(model)

    def class_choices(self, model: str | None = None) -> list[tuple[str, int]]:
        pipe = self.pipeline(model)
        names = pipe.class_names
        if pipe.class_groups:  # each group (any of its classes, by the seed), then its classes
            choices = []
            for g, group in enumerate(pipe.group_names):
                choices.append((f"{group} (any)", FIRST_GROUP - g))
                choices += [(names[k], k) for k in group_members(pipe.class_groups, g)]
        elif len(names) > 50:  # ImageNet: the index helps tell the two "crane"s apart
            choices = [(f"{i} · {name}", i) for i, name in enumerate(names)]
        else:
            choices = [(name, i) for i, name in enumerate(names)]
        return choices + [("(no class: unconditional)", UNCONDITIONAL)]

    def model_status(self, model: str) -> str:
        spec, pipe = self.cache.specs[model], self.pipeline(model)
        groups = f" in {len(pipe.group_names)} groups" if pipe.group_names else ""
        return (
            f"**{model}**: {spec.about}. {pipe.grid}×{pipe.grid} tokens, {pipe.image_size} px, "
            f"{len(pipe.class_names)} classes{groups}, on {pipe.device.type}."
        )

    def switch_model(self, model: str, current: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        """-> (model picker, active model, class picker, CFG scale, status). Offline: stay put."""
        try:
            if not self.cache.is_loaded(model):
                progress(0, desc=f"Loading {model}…")
            self.cache.get(model)
            # inside the try: they read the model again, which another session may have evicted meanwhile
            choices, status = self.class_choices(model), self.model_status(model)
        except HubUnavailableError as exc:
            log.warning("cannot load %s: %s", model, exc)
            gr.Warning(f"{model} could not be fetched from the hub ({exc}). Staying on {current}.")
            return current, current, gr.skip(), gr.skip(), gr.skip()
        except ARPGError as exc:
            gr.Warning(f"{model} could not be loaded ({exc}). Staying on {current}.")
            return current, current, gr.skip(), gr.skip(), gr.skip()
        except Exception as exc:  # out of memory, a broken download...: the picker must not show a model not in use
            log.exception("loading %s failed", model)
            oom = isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))
            reason = "out of memory" if oom else type(exc).__name__
            gr.Warning(f"{model} could not be loaded ({reason}; details in the server log). Staying on {current}.")
            return current, current, gr.skip(), gr.skip(), gr.skip()
        return (
            model,
            model,
            gr.update(choices=choices, value=choices[0][1]),
            self.cache.specs[model].cfg_scale,
            status,
        )

    # ---- streaming --------------------------------------------------------------------------
    def _stream(self, pipeline: Pipeline, frames: Iterator[Frame], model: str, blank: bool = False):
        """-> (frame image, counter, Run, final images or None), throttled to FRAME_INTERVAL.
        blank: the first frame is all pending (generation), so its picture can be reused."""
        run, last, gap = None, 0.0, FRAME_INTERVAL
        try:
            for frame in frames:
                if run is None:
                    run = Run(model, display_scale(pipeline, tuple(frame.tokens.shape[-2:])))
                run.add(frame)
                if frame.done or frame.step == 0 or time.monotonic() - last >= gap:
                    started = time.monotonic()
                    if blank and frame.step == 0:
                        image = self._blank(pipeline, frame, model, run.scale)
                    else:
                        image = pipeline.render(frame.tokens, frame.positions, run.scale)
                    last = time.monotonic()
                    # Sampling gets at least twice the time rendering takes (a big canvas, a slow VQ).
                    gap = max(FRAME_INTERVAL, 2 * (last - started))
                    run.keep_shown(last, image)
                    counter = counter_html(frame.step, frame.num_steps, "done" if frame.done else "")
                    yield image, counter, run, frame.images
        except Exception:
            if run is not None:
                run.failed = True  # the error itself reaches the user through user_errors
            raise
        finally:
            frames.close()  # a stopped run frees its KV cache now, not at garbage collection
            if pipeline.device.type == "cuda":
                torch.cuda.empty_cache()

    def _blank(self, pipeline: Pipeline, frame: Frame, model: str, scale: int) -> Image.Image:
        key = (model, tuple(frame.tokens.shape), scale)
        if key not in self._blanks:
            self._blanks[key] = pipeline.render(frame.tokens, None, scale)
        return self._blanks[key]

    # ---- the four endpoints -------------------------------------------------------------------
    @gpu
    @user_errors
    def generate(
        self,
        label=0,
        seed=0,
        num_images=1,
        steps=32,
        cfg_scale=4.0,
        cfg_schedule="constant",
        schedule="arccos",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        order="random",
        model=None,
    ):
        pipeline = self.pipeline(model)
        options = sampling_options(steps, cfg_scale, cfg_schedule, schedule, temperature, top_k, top_p, order)
        if not 1 <= int(num_images) <= MAX_IMAGES:
            raise gr.Error(f"Number of images must be between 1 and {MAX_IMAGES}.")
        labels = [self._label(label, pipeline, int(seed or 0) + i) for i in range(int(num_images))]
        frames = pipeline.generate(labels, seed=int(seed or 0), options=options)
        for image, counter, run, results in self._stream(pipeline, frames, model, blank=True):
            yield results or gr.skip(), image, counter, run  # the last results stay until new ones come

    @gpu
    @user_errors
    def inpaint(
        self,
        editor=None,
        label=0,
        seed=0,
        steps=32,
        cfg_scale=4.0,
        cfg_schedule="constant",
        schedule="arccos",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        order="random",
        model=None,
        placed=None,
    ):
        """placed: the fingerprint of the image last put into the editor from outside (an example,
        a generated image)."""
        if not editor or editor.get("background") is None:
            raise gr.Error("Upload an image (or pick an example) and paint the region to change.")
        image = open_image(editor["background"])
        if placed is not None and not same_picture(image, placed):
            # The editor sends its last painted state until it is painted on again.
            raise gr.Error("Paint over the region to regenerate on this image first.")
        mask = mask_from_layers(editor.get("layers"), image.size)
        if not mask.any():
            raise gr.Error("The mask is empty: paint over the region to regenerate with the brush.")
        pipeline = self.pipeline(model)
        options = sampling_options(steps, cfg_scale, cfg_schedule, schedule, temperature, top_k, top_p, order)
        seed = int(seed or 0)
        frames = pipeline.inpaint(image, mask, self._label(label, pipeline, seed), seed=seed, options=options)
        yield from self._edit(pipeline, frames, model)

    @gpu
    @user_errors
    def outpaint(
        self,
        image=None,
        top=4,
        right=4,
        bottom=4,
        left=4,
        label=0,
        seed=0,
        steps=32,
        cfg_scale=4.0,
        cfg_schedule="constant",
        schedule="arccos",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        order="random",
        model=None,
    ):
        if image is None:
            raise gr.Error("Upload an image (or pick an example) to outpaint.")
        pad = tuple(int(p or 0) for p in (top, right, bottom, left))
        pipeline = self.pipeline(model)
        options = sampling_options(steps, cfg_scale, cfg_schedule, schedule, temperature, top_k, top_p, order)
        seed = int(seed or 0)
        frames = pipeline.outpaint(image, pad, self._label(label, pipeline, seed), seed=seed, options=options)
        yield from self._edit(pipeline, frames, model)

    @gpu
    @user_errors
    def expand(
        self,
        image=None,
        label=0,
        seed=0,
        steps=32,
        cfg_scale=4.0,
        cfg_schedule="constant",
        schedule="arccos",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        order="random",
        model=None,
    ):
        if image is None:
            raise gr.Error("Upload an image (or pick an example) to expand.")
        pipeline = self.pipeline(model)
        options = sampling_options(steps, cfg_scale, cfg_schedule, schedule, temperature, top_k, top_p, order)
        seed = int(seed or 0)
        frames = pipeline.expand(image, self._label(label, pipeline, seed), seed=seed, options=options)
        yield from self._edit(pipeline, frames, model)

    def _edit(self, pipeline: Pipeline, frames: Iterator[Frame], model: str | None):
        for image, counter, run, results in self._stream(pipeline, frames, model):
            yield results[0] if results else gr.skip(), image, counter, run

    @staticmethod
    def _label(label, pipeline: Pipeline, seed: int) -> int:
        """The class index of a picker value; a group's value (FIRST_GROUP - g) becomes the class
        of that group the seed draws, with the odds of its training images (image i of a batch has seed + i)."""
        if label is None:
            return UNCONDITIONAL
        label = int(label)
        return pipeline.group_label(FIRST_GROUP - label, seed) if label <= FIRST_GROUP else label

    # ---- after a run: replay, order map, animation ---------------------------------------------
    @user_errors
    def replay(self, run: Run | None, step: float):
        if run is None or not run.tokens:
            return gr.skip(), gr.skip()
        step = min(max(int(step), 0), run.num_steps)
        pipeline = self.cache.renderer(run.model)
        image = pipeline.render(run.tokens[step].long(), run.positions[step], run.scale)
        return image, counter_html(step, run.num_steps, "replay")

    @user_errors
    def summarize(self, run: Run | None):
        """-> (order maps, step slider, GIF file, counter) once a run has finished or stopped."""
        if run is None or run.step_map is None or run.shown is None:  # nothing yet, or summarized already
            # the new run failed or was stopped before its first frame: the old run's slider works again
            usable = run is not None and run.num_steps > 0
            return gr.skip(), gr.update(interactive=usable), gr.skip(), gr.skip()
        pipeline = self.cache.renderer(run.model)
        maps = side_by_side([pipeline.order_map(m, run.scale) for m in run.step_map])
        slider = gr.update(maximum=max(run.num_steps, 1), value=run.num_steps, interactive=run.num_steps > 0)
        # a stopped run says so, rather than a part-filled bar that looks hung
        counter = gr.skip() if run.done else counter_html(run.num_steps, run.total,
                                                          "failed" if run.failed else "stopped")
        return maps, slider, write_gif(run, self.gif_dir), counter

    @staticmethod
    def lock_replay():
        """A new run is starting: the slider would scrub the old run's steps over the new frames."""
        return gr.update(interactive=False)

    # ---- helpers for the editing tabs ------------------------------------------------------------
    @user_errors
    def frame_for(self, image, pad: tuple, model: str | None):
        """The outpaint frame's value for a newly chosen image (None clears it)."""
        if image is None:
            return None
        return frame_value(open_image(image), self.pipeline(model), pad)

    @staticmethod
    def to_editor(image):
        """A picked result -> an ImageEditor value with no mask yet."""
        if image is None:
            return gr.skip()
        return {"background": image, "layers": [], "composite": image}
