"""The Blocks layout and its events. `create_demo()` builds the app; `app.py` launches it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app import gradio_fixes
from app.handlers import MAX_IMAGES, Studio, user_errors
from app.inputs import ClassPicker, SafeImage, SafeImageEditor
from app.models import ASSETS, ModelCache, registry
from app.outpaint_frame import OutpaintFrame
from app.runs import fingerprint
from arpg_core.imageio import open_image
from arpg_core.pipeline import MAX_CANVAS_CELLS
from arpg_core.sampling.plan import CFG_SCHEDULES, ORDERS, SCHEDULES

EXAMPLES = ASSETS / "examples"
MAX_FILE_SIZE = "64mb"  # the editor uploads full-size RGBA PNGs: ~35 MB for a 16-megapixel photo
QUEUE_SIZE = 16
LIGHT = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")  # UI helpers
HEADER = (
    "# ARPG Studio\nRandomized parallel autoregressive generation: each step decodes a random set of tokens "
    "at once. Watch it assemble, then inpaint, outpaint or expand."
)
ORDER_LEGEND = (
    '<div class="arpg-legend"><span>first step</span><i></i><span>last step</span>'
    "<b></b><span>given (kept)</span></div>"
)
IDLE_COUNTER = '<div class="arpg-counter"><span class="note">Press the button to start.</span></div>'

THEME = gr.themes.Soft(
    primary_hue="violet",
    secondary_hue="indigo",
    neutral_hue="slate",
    font=("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"),
    font_mono=("ui-monospace", "SFMono-Regular", "Menlo", "monospace"),
)

CSS = """
.arpg-header h1 { margin-bottom: 0; }
.arpg-header p { margin-top: 4px; color: var(--body-text-color-subdued); }
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.arpg-view .image-container, .arpg-view .image-frame { width: 100%; height: 100%; }
.arpg-view .image-frame img { width: 100%; height: 100%; object-fit: contain; }
.arpg-counter { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 12px; padding: 2px 4px;
  font-variant-numeric: tabular-nums; }
.arpg-counter .note { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
.arpg-counter .bar { flex-basis: 100%; height: 6px; border-radius: 3px; background: var(--neutral-200);
  overflow: hidden; }
.arpg-counter .bar i { display: block; height: 100%; background: var(--color-accent); transition: width .08s; }
.arpg-legend { display: flex; align-items: center; gap: 8px; font-size: var(--text-sm); white-space: nowrap;
  color: var(--body-text-color-subdued); padding: 0 4px; }
.arpg-legend i { flex: 0 1 160px; height: 10px; border-radius: 5px;
  background: linear-gradient(90deg, rgb(40, 30, 120), rgb(250, 230, 60)); }
.arpg-legend b { width: 10px; height: 10px; margin-left: 12px; border-radius: 2px; background: rgb(200, 200, 205); }
#dice { max-width: 3.2em; min-width: 3.2em; font-size: 1.3em; }
.arpg-model-status p { margin: 0; font-size: var(--text-sm); color: var(--body-text-color-subdued); }
"""


def concurrency_limit() -> int:
    """One run at a time on a CPU; a GPU can interleave a couple (override with ARPG_CONCURRENCY)."""
    default = 2 if torch.cuda.is_available() else 1
    return int(os.environ.get("ARPG_CONCURRENCY", default))


def example_paths() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.glob("*.png"))


def default_editor_value() -> dict:
    """The first example with a painted region, so Run works straight away (and over the API)."""
    background = Image.open(EXAMPLES / "grinning.png").convert("RGBA")
    alpha = np.zeros((background.height, background.width), dtype=np.uint8)
    h, w = alpha.shape
    alpha[int(h * 0.55) : int(h * 0.85), int(w * 0.25) : int(w * 0.75)] = 150  # over the mouth
    layer = Image.new("RGBA", background.size, (255, 79, 154, 0))
    layer.putalpha(Image.fromarray(alpha))
    return {"background": background, "layers": [layer], "composite": Image.alpha_composite(background, layer)}


def _sampling_controls(studio: Studio) -> list[gr.components.Component]:
    with gr.Accordion("Sampling", open=True):
        steps = gr.Slider(
            1,
            128,
            value=32,
            step=1,
            label="Steps",
            info="with known tokens (editing), fewer in proportion",
            elem_id="steps",
        )
        cfg_scale = gr.Slider(
            0, 10, value=studio.cache.specs[studio.default_model].cfg_scale, step=0.1, label="CFG scale"
        )
        with gr.Row():
            cfg_schedule = gr.Dropdown(list(CFG_SCHEDULES), value="constant", label="CFG schedule", min_width=120)
            schedule = gr.Dropdown(list(SCHEDULES), value="arccos", label="Tokens per step", min_width=120)
        order = gr.Radio(list(ORDERS), value="random", label="Decoding order")
        temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature")
        with gr.Row():
            top_k = gr.Number(0, precision=0, minimum=0, label="Top-k", info="0 = off", min_width=100)
            top_p = gr.Number(1.0, minimum=0.01, maximum=1.0, step=0.05, label="Top-p", info="1 = off", min_width=100)
    return [steps, cfg_scale, cfg_schedule, schedule, temperature, top_k, top_p, order]


def _run_buttons(label: str):
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=3)
        stop = gr.Button("Stop", variant="stop", scale=1)
    return run, stop


def _view(label: str, height: int, **kwargs) -> gr.Image:
    """A single image shown large with crisp pixels (the model's images are small)."""
    return gr.Image(
        label=label,
        type="pil",
        format="png",
        interactive=False,
        height=height,
        elem_classes=["pixelated", "arpg-view"],
        **kwargs,
    )


def _input_image(label: str, examples: list[str], height: int, elem_id: str) -> SafeImage:
    image = SafeImage(
        elem_id=elem_id,
        value=examples[0] if examples else None,
        type="filepath",
        image_mode=None,
        label=label,
        height=height,
        sources=("upload", "clipboard"),
        elem_classes=["pixelated", "arpg-view"],
    )
    gr.Examples([[p] for p in examples], inputs=[image], label="Examples", examples_per_page=8)
    return image


def _live_view(prefix: str):
    """Live frame, step counter and the replay section -> (live, counter, run, maps, slider, gif)."""
    live = _view("Decoding", 360, elem_id=f"{prefix}-live", buttons=["download"])
    counter = gr.HTML(IDLE_COUNTER, js_on_load=None, label="Progress", elem_id=f"{prefix}-counter")
    run = gr.State(None)
    with gr.Accordion("Decoding order and replay", open=False):
        maps = _view("Decoding order", 220, elem_id=f"{prefix}-maps")
        gr.HTML(ORDER_LEGEND, js_on_load=None)
        slider = gr.Slider(
            0,
            1,
            value=0,
            step=1,
            label="Step",
            interactive=False,
            elem_id=f"{prefix}-step",
            info="scrub back through the decoding steps",
        )
        gif = gr.File(label="Animation (GIF)", interactive=False, elem_id=f"{prefix}-gif")
    return live, counter, run, maps, slider, gif


@dataclass
class Tab:
    """One tab's run: its button, the inputs before the shared ones, where results go."""

    name: str
    button: gr.Button
    stop: gr.Button
    inputs: list
    result: gr.components.Component
    view: tuple  # from _live_view
    extra: list = field(default_factory=list)  # inputs after the shared ones (kept out of the API)


def _generate_tab() -> tuple[Tab, gr.Gallery, dict[str, gr.Button]]:
    with gr.Tab("Generate", id="generate"), gr.Row():
        with gr.Column(scale=1):
            num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Number of images", elem_id="num-images")
            button, stop = _run_buttons("Generate")
            gallery = gr.Gallery(
                label="Results",
                format="png",
                columns=2,
                object_fit="contain",
                type="filepath",
                elem_id="gen-results",
                elem_classes="pixelated",
                interactive=False,
            )
            with gr.Row():
                send = {
                    tab: gr.Button(f"{tab.capitalize()} this", size="sm") for tab in ("inpaint", "outpaint", "expand")
                }
        with gr.Column(scale=1):
            view = _live_view("gen")
    return Tab("generate", button, stop, [num_images], gallery, view), gallery, send


def _inpaint_tab(examples: list[str]) -> Tab:
    with gr.Tab("Inpaint", id="inpaint"), gr.Row():
        with gr.Column(scale=1):
            editor = SafeImageEditor(
                value=default_editor_value(),
                type="pil",
                image_mode="RGBA",
                format="png",
                label="Paint the region to regenerate",
                height=420,
                elem_id="inp-editor",
                sources=("upload", "clipboard"),
                transforms=(),
                layers=False,
                brush=gr.Brush(default_size=3, colors=[("#ff4f9a", 0.6)], color_mode="fixed"),
                eraser=gr.Eraser(default_size=3),
                elem_classes="pixelated",
            )
            # A Dataset rather than gr.Examples: one server event sets the editor and `placed` together.
            # (gr.Examples fills the editor in its own event, and a separate `placed` update could land
            # after a Run, letting the start-up picture be inpainted instead of the picked one.)
            picks = gr.Dataset(
                components=["image"], samples=[[p] for p in examples], type="index", label="Examples",
                samples_per_page=8, elem_id="inp-examples",
            )
            button, stop = _run_buttons("Inpaint")
            # What was last placed into the editor from outside, to catch it sending a stale canvas.
            # (Inside the tab: a bare child of gr.Tabs would shift the tabs' labels.)
            placed = gr.State(None)
        with gr.Column(scale=1):
            result = _view("Result", 280, elem_id="inp-result")
            view = _live_view("inp")
    def pick(index: int):  # a picture, not a path: Gradio serves returned paths only from allowed folders
        image = open_image(examples[index])
        return Studio.to_editor(image), fingerprint(image)

    picks.click(pick, picks, [editor, placed], **LIGHT)
    editor.upload(lambda: None, None, placed, **LIGHT)
    return Tab("inpaint", button, stop, [editor], result, view, extra=[placed])


def _outpaint_tab(examples: list[str]) -> tuple[Tab, OutpaintFrame]:
    with gr.Tab("Outpaint", id="outpaint"), gr.Row():
        with gr.Column(scale=1):
            image = _input_image("Image", examples, 180, "out-image")
            frame = OutpaintFrame(elem_id="out-frame")
            with gr.Row():
                pads = [
                    gr.Number(
                        4,
                        precision=0,
                        minimum=0,
                        maximum=MAX_CANVAS_CELLS,
                        label=side,
                        min_width=70,
                        elem_id=f"out-{side.lower()}",
                    )
                    for side in ("Top", "Right", "Bottom", "Left")
                ]
            button, stop = _run_buttons("Outpaint")
        with gr.Column(scale=1):
            result = _view("Result", 280, elem_id="out-result")
            view = _live_view("out")
    return Tab("outpaint", button, stop, [image, *pads], result, view), frame


def _expand_tab(examples: list[str]) -> Tab:
    with gr.Tab("Expand", id="expand"), gr.Row():
        with gr.Column(scale=1):
            image = _input_image("Image", examples, 260, "exp-image")
            gr.Markdown(
                "Twice the token grid in each direction: the image's tokens stay on every other cell "
                "and the new ones are generated around them."
            )
            button, stop = _run_buttons("Expand")
        with gr.Column(scale=1):
            result = _view("Result", 280, elem_id="exp-result")
            view = _live_view("exp")
    return Tab("expand", button, stop, [image], result, view)


API_DESCRIPTIONS = {
    "generate": "Class-conditional images, streamed step by step. Returns (gallery of finished images, "
    "live frame, progress HTML).",
    "inpaint": "Regenerate the painted part of an ImageEditor value ({background, layers, composite}). "
    "Returns (result image, live frame, progress HTML).",
    "outpaint": "Grow the canvas by top/right/bottom/left token cells around the image. Returns (result "
    "image, live frame, progress HTML).",
    "expand": "Twice the token grid in each direction around the image's own tokens. Returns (result "
    "image, live frame, progress HTML).",
}


def _wire_runs(studio: Studio, tabs: list[Tab], shared: list) -> None:
    """Each tab's button streams into its view; its Stop cancels that tab's run, not the others'."""
    heavy = dict(concurrency_id="model", concurrency_limit=concurrency_limit(), show_progress="minimal")
    for tab in tabs:
        live, counter, run, maps, slider, gif = tab.view
        inputs = [*tab.inputs, *shared] if tab.name != "generate" else [*shared[:2], *tab.inputs, *shared[2:]]
        inputs += tab.extra
        tab.button.click(studio.lock_replay, None, slider, **LIGHT)
        event = tab.button.click(
            getattr(studio, tab.name), inputs, [tab.result, live, counter, run], api_name=tab.name,
            api_description=API_DESCRIPTIONS[tab.name], **heavy,
        )
        event.then(studio.summarize, run, [maps, slider, gif, counter], **LIGHT)
        slider.input(studio.replay, [run, slider], [live, counter], trigger_mode="always_last", **LIGHT)
        tab.stop.click(None, None, None, cancels=[event])


def _wire_outpaint(studio: Studio, demo: gr.Blocks, tab: Tab, frame: OutpaintFrame, active: gr.State) -> None:
    """The image, the draggable frame and the numbers stay in step; frame <-> numbers in the browser."""
    image, *pads = tab.inputs

    def show(img, top, right, bottom, left, model):
        return studio.frame_for(img, (top, right, bottom, left), model)

    for trigger in (image.change, active.change, demo.load):  # a new model may have another token grid
        trigger(show, [image, *pads, active], frame, **LIGHT)
    # No image (cleared to upload another): the numbers keep the user's padding.
    keep = "(v, t, r, b, l) => v ? [v.top, v.right, v.bottom, v.left] : [t, r, b, l]"
    frame.change(None, [frame, *pads], pads, js=keep)
    to_frame = "(v, t, r, b, l) => v ? Object.assign({}, v, {top: t | 0, right: r | 0, bottom: b | 0, left: l | 0}) : v"
    for box in pads:
        box.input(None, [frame, *pads], frame, js=to_frame)


def _wire_send(studio: Studio, gallery: gr.Gallery, send: dict, tabs: gr.Tabs, targets: dict) -> None:
    """The "Inpaint this" buttons and friends: the picked result goes to that tab's input, which opens."""
    picked = gr.State(0)

    def pick(evt: gr.SelectData) -> int:
        return evt.index

    gallery.select(pick, None, picked, **LIGHT)
    gallery.change(lambda: 0, None, picked, **LIGHT)  # a new batch: its first image, not an old pick

    def sender(tab: str):
        @user_errors
        def send_to(images, index):
            if not images:
                raise gr.Error("Generate an image first.")
            image = images[min(int(index or 0), len(images) - 1)][0]
            if not os.path.isfile(image):  # Gradio's cache deletes results after an hour
                raise gr.Error("That result is no longer on the server (results are kept for an hour); "
                               "generate it again.")
            if tab == "inpaint":  # the editor value, and the image as the one placed there
                picture = open_image(image)
                return studio.to_editor(picture), fingerprint(picture), gr.update(selected=tab)
            return image, gr.update(selected=tab)

        return send_to

    for tab, button in send.items():
        button.click(sender(tab), [gallery, picked], [*targets[tab], tabs], **LIGHT)


def create_demo(studio: Studio | None = None) -> gr.Blocks:
    gradio_fixes.install()  # before any picture reaches Gradio's cache
    studio = studio or Studio(ModelCache(registry()))
    examples = example_paths()
    with gr.Blocks(title="ARPG Studio", delete_cache=(1800, 3600)) as demo:
        active = gr.State(studio.default_model)  # changes only once a picked model has loaded
        with gr.Row(equal_height=True):
            with gr.Column(scale=3, elem_classes="arpg-header"):
                gr.Markdown(HEADER)
            with gr.Column(scale=2):
                model = gr.Dropdown(
                    list(studio.cache.specs), value=studio.default_model, label="Model", elem_id="model"
                )
                status = gr.Markdown(studio.model_status(studio.default_model), elem_classes="arpg-model-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                choices = studio.class_choices()
                label = ClassPicker(choices, value=choices[0][1], label="Class", filterable=True, info="type to search")
                with gr.Row(equal_height=True):
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="seed", scale=4, min_width=120)
                    dice = gr.Button("🎲", elem_id="dice", scale=0, min_width=48)
                sampling = _sampling_controls(studio)
            with gr.Column(scale=3), gr.Tabs() as tabs:
                generate, gallery, send = _generate_tab()
                inpaint = _inpaint_tab(examples)
                outpaint, frame = _outpaint_tab(examples)
                expand = _expand_tab(examples)

        dice.click(None, None, seed, js="() => Math.floor(Math.random() * 2147483647)")
        model.input(
            studio.switch_model,
            [model, active],
            [model, active, label, sampling[1], status],
            concurrency_limit=None,  # ModelCache locks per model: one session's download holds up no other's
            trigger_mode="always_last",  # a pick made while this session's model loads is applied after it
            api_visibility="private",
        )
        _wire_runs(studio, [generate, inpaint, outpaint, expand], [label, seed, *sampling, active])
        _wire_outpaint(studio, demo, outpaint, frame, active)
        targets = {
            "inpaint": [inpaint.inputs[0], *inpaint.extra],
            "outpaint": outpaint.inputs[:1],
            "expand": expand.inputs[:1],
        }
        _wire_send(studio, gallery, send, tabs, targets)
    return demo


def launch_options() -> dict:
    return dict(theme=THEME, css=CSS, max_file_size=MAX_FILE_SIZE, show_error=True)
