"""The outpaint frame: a `gr.HTML` component with a frame around the image whose edges and corners
drag outward, snapping to token cells, with the new size shown live.

Its value is a dict: the image (a small data URL), its token grid (`rows`, `cols`), source pixels
per cell (`px_x`, `px_y`), the padding per side in cells (`top`, `right`, `bottom`, `left`), the
canvas cap `max` and the result's pixel cap `max_px` (the pipeline scales a larger result down to
fit, and the size shown does the same). Dragging moves the frame locally; on release the new
padding is written to `props.value`, which fires `change`. The view is `view` cells square with the image in the middle,
so dragging one side can reach half of the spare room; the numeric fields can ask for any split.
"""

from __future__ import annotations

import base64
import io

import gradio as gr
from PIL import Image

from arpg_core.imageio import MAX_PIXELS
from arpg_core.pipeline import MAX_CANVAS_CELLS, Pipeline, cell_grid, source_px_per_cell

THUMB_PX = 320

HTML_TEMPLATE = """
<div class="op-root">${(() => {
  if (!value || !value.src) {
    return '<div class="op-empty">Upload an image or pick an example, then drag the frame outward.</div>';
  }
  const v = value;
  const view = Math.max(v.max, v.cols + 2 * Math.max(v.left, v.right), v.rows + 2 * Math.max(v.top, v.bottom));
  const w = v.cols + v.left + v.right, h = v.rows + v.top + v.bottom;
  // Pipeline.outpaint's size: source pixels per cell, floored to fit max_px when larger
  const fit = (W, H) => (W * H > v.max_px ? [Math.floor(W * Math.sqrt(v.max_px / (W * H))),
    Math.floor(H * Math.sqrt(v.max_px / (W * H))), ' (scaled to fit)'] : [W, H, '']);
  const [pw, ph, note] = fit(Math.round(w * v.px_x), Math.round(h * v.px_y));
  const handles = ['n', 's', 'e', 'w', 'ne', 'nw', 'se', 'sw'].map(
    (s) => `<div class="op-h op-${s}" data-side="${s}" tabindex="0" role="slider" aria-label="drag ${s} edge"></div>`
  ).join('');
  const vars = `--view:${view};--rows:${v.rows};--cols:${v.cols}`;
  const pad = `--t:${v.top};--r:${v.right};--b:${v.bottom};--l:${v.left}`;
  return `<div class="op-stage" style="${vars};${pad}">
      <div class="op-canvas">${handles}</div>
      <img class="op-img" src="${v.src}" alt="image to outpaint" draggable="false">
    </div>
    <div class="op-size"><span class="op-px">${pw} × ${ph} px${note}</span>
      <span class="op-cells">${w} × ${h} tokens</span>
      <span class="op-pad">+${v.top} ↑ · +${v.right} → · +${v.bottom} ↓ · +${v.left} ←</span></div>`;
})()}</div>
"""

CSS_TEMPLATE = """
.op-root { display: flex; flex-direction: column; align-items: center; gap: 8px; width: 100%; }
.op-empty { width: 100%; min-height: 220px; display: flex; align-items: center; justify-content: center;
  border: 2px dashed var(--border-color-primary); border-radius: 12px; color: var(--body-text-color-subdued);
  padding: 16px; text-align: center; }
.op-stage { --cell: calc(100% / var(--view)); position: relative; width: min(100%, 440px); aspect-ratio: 1;
  border-radius: 12px; touch-action: none; user-select: none;
  background: repeating-conic-gradient(var(--neutral-100) 0% 25%, var(--neutral-50) 0% 50%) 0 0 / 16px 16px; }
.op-img { position: absolute; image-rendering: pixelated; pointer-events: none;
  left: calc((var(--view) - var(--cols)) / 2 * var(--cell)); top: calc((var(--view) - var(--rows)) / 2 * var(--cell));
  width: calc(var(--cols) * var(--cell)); height: calc(var(--rows) * var(--cell)); }
.op-canvas { position: absolute; box-sizing: border-box; border: 2px dashed var(--color-accent);
  background: color-mix(in srgb, var(--color-accent) 14%, transparent);
  left: calc(((var(--view) - var(--cols)) / 2 - var(--l)) * var(--cell));
  top: calc(((var(--view) - var(--rows)) / 2 - var(--t)) * var(--cell));
  width: calc((var(--cols) + var(--l) + var(--r)) * var(--cell));
  height: calc((var(--rows) + var(--t) + var(--b)) * var(--cell)); }
.op-h { position: absolute; width: 16px; height: 16px; margin: -8px 0 0 -8px; border-radius: 50%; z-index: 2;
  background: white; border: 2px solid var(--color-accent); box-shadow: 0 1px 3px rgba(0,0,0,.3); }
.op-h:focus-visible { outline: 3px solid var(--color-accent); }
.op-n, .op-s { left: 50%; cursor: ns-resize; } .op-e, .op-w { top: 50%; cursor: ew-resize; }
.op-n, .op-ne, .op-nw { top: 0; } .op-s, .op-se, .op-sw { top: 100%; }
.op-w, .op-nw, .op-sw { left: 0; } .op-e, .op-ne, .op-se { left: 100%; }
.op-ne, .op-sw { cursor: nesw-resize; } .op-nw, .op-se { cursor: nwse-resize; }
.op-size { display: flex; gap: 12px; flex-wrap: wrap; justify-content: center; font-size: var(--text-md); }
.op-px { font-weight: 600; } .op-cells, .op-pad { color: var(--body-text-color-subdued); }
"""

JS_ON_LOAD = """
const SIDES = { n: ['top', 0, -1], s: ['bottom', 0, 1], e: ['right', 1, 0], w: ['left', -1, 0] };
let drag = null;

function current() { return Object.assign({}, props.value); }

function limits(v, view) {
  // One side can use half the spare room of the view; both sides together stay within the cap.
  return { x: Math.floor((view - v.cols) / 2), y: Math.floor((view - v.rows) / 2) };
}

function show(v) {
  const stage = element.querySelector('.op-stage');
  if (!stage) return;
  stage.style.setProperty('--t', v.top); stage.style.setProperty('--r', v.right);
  stage.style.setProperty('--b', v.bottom); stage.style.setProperty('--l', v.left);
  const w = v.cols + v.left + v.right, h = v.rows + v.top + v.bottom;
  let W = Math.round(w * v.px_x), H = Math.round(h * v.px_y), note = '';
  if (W * H > v.max_px) {  // as Pipeline.outpaint: the whole result scaled down to the pixel cap
    const s = Math.sqrt(v.max_px / (W * H));
    [W, H, note] = [Math.floor(W * s), Math.floor(H * s), ' (scaled to fit)'];
  }
  element.querySelector('.op-px').textContent = `${W} × ${H} px${note}`;
  element.querySelector('.op-cells').textContent = `${w} × ${h} tokens`;
  element.querySelector('.op-pad').textContent = `+${v.top} ↑ · +${v.right} → · +${v.bottom} ↓ · +${v.left} ←`;
}

function apply(v, side, dx, dy, lim) {
  for (const ch of side) {
    const [key, sx, sy] = SIDES[ch];
    const start = drag ? drag.start[key] : v[key];
    const delta = sx ? sx * dx : sy * dy;
    const other = { top: 'bottom', bottom: 'top', left: 'right', right: 'left' }[key];
    const span = sx ? v.cols : v.rows;
    const most = Math.min(sx ? lim.x : lim.y, v.max - span - v[other]);
    v[key] = Math.max(0, Math.min(most, start + delta));
  }
  return v;
}

function commit(v) {
  props.value = v;
  trigger('change');
}

element.addEventListener('pointerdown', (e) => {
  const handle = e.target.closest('.op-h');
  const stage = element.querySelector('.op-stage');
  if (!handle || !stage || !props.value) return;
  e.preventDefault();
  const view = parseFloat(getComputedStyle(stage).getPropertyValue('--view'));
  drag = { side: handle.dataset.side, x: e.clientX, y: e.clientY, start: current(), view,
           cell: stage.getBoundingClientRect().width / view, v: current() };
  handle.setPointerCapture(e.pointerId);
});

element.addEventListener('pointermove', (e) => {
  if (!drag) return;
  const dx = Math.round((e.clientX - drag.x) / drag.cell), dy = Math.round((e.clientY - drag.y) / drag.cell);
  drag.v = apply(current(), drag.side, dx, dy, limits(drag.start, drag.view));
  show(drag.v);
});

function finish() {
  if (!drag) return;
  const v = drag.v;
  drag = null;
  if (['top', 'right', 'bottom', 'left'].some((k) => v[k] !== props.value[k])) commit(v);
}
element.addEventListener('pointerup', finish);
element.addEventListener('pointercancel', finish);

element.addEventListener('keydown', (e) => {
  const handle = e.target.closest('.op-h');
  const keys = { ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0] };
  if (!handle || !keys[e.key] || !props.value) return;
  e.preventDefault();
  const stage = element.querySelector('.op-stage');
  const view = parseFloat(getComputedStyle(stage).getPropertyValue('--view'));
  const [dx, dy] = keys[e.key];
  commit(apply(current(), handle.dataset.side, dx, dy, limits(props.value, view)));
});
"""


class OutpaintFrame(gr.HTML):
    """Drag the edges or corners of the frame outward; the value carries the padding per side."""

    def __init__(self, value: dict | None = None, **kwargs):
        super().__init__(
            value=value,
            html_template=HTML_TEMPLATE,
            css_template=CSS_TEMPLATE,
            js_on_load=JS_ON_LOAD,
            apply_default_css=False,
            **kwargs,
        )

    def api_info(self) -> dict:
        return {"type": "object", "description": "image data URL, token grid and padding per side"}


def frame_value(image: Image.Image, pipeline: Pipeline, pad: tuple) -> dict:
    """The frame's value for an RGB image under this pipeline's token grid."""
    rows, cols = cell_grid(image.width, image.height, pipeline.grid)
    thumb = image.copy()
    if max(thumb.size) > THUMB_PX:
        thumb.thumbnail((THUMB_PX, THUMB_PX), Image.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    top, right, bottom, left = (int(p or 0) for p in pad)
    px_x, px_y = source_px_per_cell(image.width, image.height, rows, cols)
    return {
        "src": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "rows": rows,
        "cols": cols,
        "px_x": px_x,
        "px_y": px_y,
        "top": top,
        "right": right,
        "bottom": bottom,
        "left": left,
        "max": MAX_CANVAS_CELLS,
        "max_px": MAX_PIXELS,
    }
