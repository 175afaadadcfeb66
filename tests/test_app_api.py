"""The launched app driven through its API with gradio_client: sizes, kept pixels, streaming,
determinism across concurrent clients, and clear errors for bad input."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageFilter

from tests.conftest import ROOT, STARTUP_BUDGET_S, TIMINGS

EXAMPLES = ROOT / "assets" / "examples"
FOX = EXAMPLES / "fox.png"  # 64 x 64, the model's native size
WIDE = EXAMPLES / "village-wide.png"  # 96 x 64
TIMEOUT = 120


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def call(client: Client, *args, api_name: str, **kwargs):
    return client.submit(*args, api_name=api_name, **kwargs).result(timeout=TIMEOUT)


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def editor_value(background, mask: np.ndarray | None) -> dict:
    """The ImageEditor payload: the mask is a layer that is white everywhere, opaque only where painted,
    so reading colour instead of alpha would change the whole image."""
    layers = []
    if mask is not None:
        layer = np.full((*mask.shape, 4), 255, dtype=np.uint8)
        layer[..., 3] = mask * 200
        path = ROOT / "test-artifacts" / "mask-layer.png"
        Image.fromarray(layer, "RGBA").save(path)
        layers = [handle_file(str(path))]
    return {"background": handle_file(str(background)), "layers": layers, "composite": None}


def test_ready_within_budget(app_url):
    assert TIMINGS["startup_s"] < STARTUP_BUDGET_S, f"app.py took {TIMINGS['startup_s']:.1f} s to serve"


def test_defaults_work_for_every_endpoint(client):
    gallery, *_ = call(client, api_name="/generate")
    assert [Image.open(item["image"]).size for item in gallery] == [(64, 64)]
    assert Image.open(call(client, api_name="/inpaint")[0]).size == (64, 64)
    assert Image.open(call(client, api_name="/outpaint")[0]).size == (96, 96)  # 4 cells of 4 px each side
    assert Image.open(call(client, api_name="/expand")[0]).size == (128, 128)  # the 64 px fox, twice the grid


def test_unconditional_generation(client):
    """-1 is "no class": the null class the model learned for guidance, drawn on its own."""
    free = load(call(client, label=-1, seed=1, steps=8, api_name="/generate")[0][0]["image"])
    faces = load(call(client, label=0, seed=1, steps=8, api_name="/generate")[0][0]["image"])
    assert free.shape == faces.shape == (64, 64, 3) and not np.array_equal(free, faces)


def test_every_endpoint_returns_the_right_size(client):
    gallery, *_ = call(client, label=3, seed=5, num_images=2, steps=8, api_name="/generate")
    assert [Image.open(item["image"]).size for item in gallery] == [(64, 64), (64, 64)]
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:40, 10:30] = True
    assert Image.open(call(client, editor_value(FOX, mask), steps=8, api_name="/inpaint")[0]).size == (64, 64)
    out = call(client, handle_file(str(FOX)), 2, 3, 1, 4, steps=4, api_name="/outpaint")[0]
    assert Image.open(out).size == ((16 + 3 + 4) * 4, (16 + 2 + 1) * 4)
    # 96 x 64 -> an 11 x 16 token grid -> expanded to 22 x 32 tokens of 4 px (128 x 88), then back to 3:2
    assert Image.open(call(client, handle_file(str(WIDE)), steps=4, api_name="/expand")[0]).size == (128, 85)


def test_inpaint_changes_only_the_masked_region(client):
    mask = np.zeros((64, 64), dtype=bool)
    mask[24:40, 16:36] = True
    result = load(call(client, editor_value(FOX, mask), seed=3, steps=8, api_name="/inpaint")[0])
    other = load(call(client, editor_value(FOX, mask), seed=4, steps=8, api_name="/inpaint")[0])
    original = load(FOX)
    rim = 3  # the feathered edge reaches 2 px beyond the mask for a 64 px image
    near = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(2 * rim + 1))) > 0
    assert np.array_equal(result[~near], original[~near]) and np.array_equal(other[~near], original[~near])
    # new content depends on the seed; the original's own tokens decoded back (a kept region) would not
    assert (result[mask] != other[mask]).any(-1).mean() > 0.5


def test_outpaint_contains_the_original(client):
    top, right, bottom, left = 3, 0, 2, 5
    result = load(call(client, handle_file(str(FOX)), top, right, bottom, left, steps=4, api_name="/outpaint")[0])
    assert result.shape == ((16 + top + bottom) * 4, (16 + left + right) * 4, 3)
    assert np.array_equal(result[top * 4 : top * 4 + 64, left * 4 : left * 4 + 64], load(FOX))


def test_generate_streams_frames(client):
    job = client.submit(steps=16, api_name="/generate")
    job.result(timeout=TIMEOUT)
    frames = {out[1] for out in job.outputs() if out[1]}
    assert len(frames) > 1, f"only {len(frames)} distinct frames streamed"
    # beyond the blank first frame and the last: a step from the middle of the run reached the client
    middle = [out[2] for out in job.outputs() if re.search(r"Step <b>([1-9]|1[0-5])</b> / 16", out[2] or "")]
    assert middle, "no frame between the first and the last step was streamed"


def test_same_seed_same_image_with_concurrent_clients(client, app_url):
    def first_image(c: Client, seed: int) -> np.ndarray:
        # Five sessions with the same seed stream the same pictures at once: each one's download
        # must come back whole (app/gradio_fixes.py; Gradio alone rewrote the shared file in place).
        return load(call(c, seed=seed, steps=8, api_name="/generate")[0][0]["image"])

    reference = first_image(client, 1234)
    assert np.array_equal(first_image(client, 1234), reference)
    assert not np.array_equal(first_image(client, 1235), reference)
    others = [Client(app_url, verbose=False) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda c: first_image(c, 1234), others))
    assert all(np.array_equal(image, reference) for image in images)


def _write(path, data: bytes):
    path.write_bytes(data)
    return handle_file(str(path))


@pytest.mark.parametrize(
    "case, message",
    [
        ("not-an-image", "not an image"),
        ("truncated", "corrupt or truncated"),
        ("too-many-pixels", "the limit is"),
        ("empty-mask", "mask is empty"),
        ("oversize-outpaint", "limit is 48"),
    ],
)
def test_bad_input_gives_a_clear_error(client, tmp_path, case, message):
    if case == "not-an-image":
        args, api = [_write(tmp_path / "notes.png", b"these are not pixels")], "/expand"
    elif case == "truncated":
        args, api = [_write(tmp_path / "cut.png", FOX.read_bytes()[:1500])], "/expand"
    elif case == "too-many-pixels":
        buffer = io.BytesIO()
        Image.new("L", (4100, 4100)).save(buffer, format="PNG")
        args, api = [_write(tmp_path / "huge.png", buffer.getvalue())], "/expand"
    elif case == "empty-mask":
        args, api = [editor_value(FOX, None)], "/inpaint"
    else:
        args, api = [handle_file(str(FOX)), 40, 40, 40, 40], "/outpaint"
    with pytest.raises(AppError, match=message):
        call(client, *args, steps=2, api_name=api)


def test_the_class_is_an_integer_to_api_clients(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    label = next(p for p in info["parameters"] if p["parameter_name"] == "label")
    assert label["type"]["type"] == "integer" and 8 in label["type"]["enum"]
    as_text = call(client, label="3", seed=2, steps=4, api_name="/generate")[0]
    as_int = call(client, label=3, seed=2, steps=4, api_name="/generate")[0]
    assert np.array_equal(np.asarray(Image.open(as_text[0]["image"])), np.asarray(Image.open(as_int[0]["image"])))
    with pytest.raises(AppError, match=r"Class 99 is not one of this model's classes \(0–8"):
        call(client, label=99, steps=2, api_name="/generate")


def test_mask_covering_everything_regenerates_the_whole_image(client):
    everything = editor_value(FOX, np.ones((64, 64), dtype=bool))
    one = load(call(client, everything, seed=1, steps=4, api_name="/inpaint")[0])
    two = load(call(client, everything, seed=2, steps=4, api_name="/inpaint")[0])
    assert one.shape == (64, 64, 3)
    # only new content depends on the seed: the fox's own tokens decoded back would be the same twice
    assert (one != two).any(-1).mean() > 0.5, "the fox came back instead of a new image"


def test_a_mask_picture_sent_as_a_layer_is_refused(client):
    """White-on-black, no alpha: Gradio makes it opaque everywhere, which once regenerated the whole
    picture without a word."""
    picture = np.zeros((64, 64), np.uint8)
    picture[20:40, 20:40] = 255
    path = ROOT / "test-artifacts" / "mask-picture.png"
    Image.fromarray(picture).save(path)
    value = {"background": handle_file(str(FOX)), "layers": [handle_file(str(path))], "composite": None}
    with pytest.raises(AppError, match="opaque everywhere"):
        call(client, value, steps=4, api_name="/inpaint")


def _odd_image(kind: str, path) -> tuple[object, tuple[int, int], np.ndarray, float]:
    """-> (upload, expected outpaint size with one cell added on the right, the picture as it should
    be kept on the left of the result, the mean error allowed: JPEGs are lossy)."""
    rgb = Image.open(FOX).convert("RGB")
    if kind == "exif-rotated":  # stored 64 x 48 landscape, EXIF says: rotate to 48 x 64 portrait
        image = rgb.resize((64, 48))
        exif = Image.Exif()
        exif[0x0112] = 6
        image.save(path.with_suffix(".jpg"), exif=exif)
        # portrait 48 x 64 -> 16 x 12 tokens; one more column of 4 px
        upright = np.asarray(image.transpose(Image.Transpose.ROTATE_270))
        return handle_file(str(path.with_suffix(".jpg"))), (52, 64), upright, 8.0
    if kind == "cmyk":
        rgb.convert("CMYK").save(path.with_suffix(".jpg"))
        return handle_file(str(path.with_suffix(".jpg"))), (68, 64), np.asarray(rgb), 8.0
    grey = rgb.convert("L")
    converted, shown = {
        "grayscale": (grey, grey),
        "palette": (rgb.convert("P", palette=Image.ADAPTIVE),) * 2,
        "rgba": (Image.open(FOX).convert("RGBA"), rgb),
        "16-bit": (Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257), grey),  # white if read as 8-bit
    }[kind]
    converted.save(path.with_suffix(".png"))
    return handle_file(str(path.with_suffix(".png"))), (68, 64), np.asarray(shown.convert("RGB")), 1.0


@pytest.mark.parametrize("kind", ["grayscale", "palette", "cmyk", "16-bit", "rgba", "exif-rotated"])
def test_odd_image_modes_give_a_sensible_result(client, tmp_path, kind):
    upload, size, kept, tolerance = _odd_image(kind, tmp_path / kind)
    result = Image.open(call(client, upload, 0, 1, 0, 0, steps=2, api_name="/outpaint")[0])
    assert result.size == size
    left = np.asarray(result.convert("RGB"))[:, : kept.shape[1]].astype(int)
    assert np.abs(left - kept).mean() <= tolerance, f"{kind}: the upload was read wrongly"


def test_upload_size_is_limited(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(65 * 1024 * 1024))  # MAX_FILE_SIZE is 64 MB
    with pytest.raises(Exception, match="maximum file size"):  # refused before any handler runs
        call(client, handle_file(str(big)), steps=2, api_name="/expand")
    assert Image.open(call(client, steps=2, api_name="/generate")[0][0]["image"]).size == (64, 64)


def test_a_stale_editor_canvas_is_refused():
    """The browser's editor can send its previous picture with a new stroke while a picked example is
    still loading; the handler compares it with what the app last placed there and refuses it."""
    import gradio as gr

    from app.handlers import Studio
    from app.models import ModelCache, registry
    from app.runs import fingerprint

    studio = Studio(ModelCache(registry()))
    mask = np.zeros((64, 64), bool)
    mask[10:30, 10:30] = True
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[..., 3] = mask * 200
    stale = {"background": Image.open(EXAMPLES / "grinning.png"), "layers": [Image.fromarray(layer, "RGBA")]}
    with pytest.raises(gr.Error, match="on this image first"):
        next(studio.inpaint(stale, steps=4, placed=fingerprint(Image.open(FOX))))
    placed = fingerprint(Image.open(FOX))
    *_, (result, *_) = studio.inpaint({**stale, "background": Image.open(FOX)}, steps=4, placed=placed)
    kept = np.asarray(result.convert("RGB")) == load(FOX)
    assert kept[40:, 40:].all() and not kept[12:28, 12:28].all(axis=-1).all()  # the fox, painted region redrawn


def test_old_runs_render_without_reloading_evicted_models():
    """Scrubbing a run made with a model that switching has since evicted draws it with a loaded
    pipeline that shares its tokenizer, instead of loading the evicted model back."""
    from app.models import EMBEDDED, ModelCache, ModelSpec, registry

    base = registry({})[EMBEDDED]
    specs = {name: ModelSpec(name, base.model, base.tokenizer, 4.0, "test") for name in ("start", "A", "B")}
    cache = ModelCache(specs)
    cache.get("start"), cache.get("A"), cache.get("B")  # B evicts A
    assert not cache.is_loaded("A")
    assert cache.renderer("A") in (cache.get("start"), cache.get("B")) and not cache.is_loaded("A")
    assert cache.renderer("B") is cache.get("B")


def test_a_failed_model_load_keeps_the_picker_on_the_model_in_use(monkeypatch):
    import warnings

    from app.handlers import Studio
    from app.models import EMBEDDED, ModelCache, registry

    studio = Studio(ModelCache(registry({})))

    def out_of_memory(spec):
        raise MemoryError

    monkeypatch.setattr(studio.cache, "_load", out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gr.Warning outside a request falls back to a Python warning
        picker, active, *_ = studio.switch_model("ARPG-L", EMBEDDED)
    assert picker == active == EMBEDDED


def test_sampling_controls_reach_the_sampler(client):
    """Greedy raster decoding ignores the seed, so any difference comes from a control that arrived:
    the class, the guidance scale, the order; and top-k 1 is greedy whatever the temperature."""
    def image(**kw) -> np.ndarray:
        base = dict(label=0, seed=1, steps=8, temperature=0.0, order="raster", cfg_scale=4.0)
        return load(call(client, **{**base, **kw}, api_name="/generate")[0][0]["image"])

    greedy = image()
    assert np.array_equal(greedy, image(seed=2))  # temperature 0 reached it: the seed no longer matters
    assert not np.array_equal(greedy, image(label=3))
    assert not np.array_equal(greedy, image(cfg_scale=1.0))
    assert not np.array_equal(greedy, image(order="spiral"))
    assert np.array_equal(greedy, image(temperature=1.0, top_k=1))


def test_a_long_run_keeps_a_bounded_number_of_frames(tmp_path):
    from app.runs import MAX_SHOWN, Run, write_gif

    run = Run("m", 1)
    frames = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(1000)]
    for i, frame in enumerate(frames):
        run.keep_shown(i * 0.1, frame)
    assert len(run.shown) <= MAX_SHOWN
    times = [t for t, _ in run.shown]
    assert times[0] == 0 and times[-1] == pytest.approx(99.9) and times == sorted(times)
    last = run.shown[-1][1]  # the latest frame, kept as a palette image (a third of the memory)
    assert last.mode == "P" and np.array_equal(np.asarray(last.convert("RGB")), np.asarray(frames[-1]))
    gif = Image.open(write_gif(run, tmp_path))
    assert gif.n_frames == len(times) and run.shown is None


def test_summaries_of_stopped_failed_and_refused_runs(monkeypatch):
    """A run stopped midway says "stopped", one ended by an error says "failed", and a run refused
    before its first frame gives the previous run's replay slider back (it was locked at the click)."""
    import gradio as gr

    from app import handlers
    from app.handlers import Studio
    from app.models import ModelCache, registry

    monkeypatch.setattr(handlers, "FRAME_INTERVAL", 0.0)  # a frame per step or two, however fast the host
    studio = Studio(ModelCache(registry({})))
    frames = studio.generate(label=1, steps=16)
    *_, run = next(frames)
    next(frames)
    frames.close()  # what Stop does
    *_, counter = studio.summarize(run)
    assert "stopped" in counter and f"Step <b>{run.num_steps}</b> / 16" in counter and run.num_steps < 16
    assert studio.summarize(run)[1]["interactive"] is True  # summarized already, but replayable
    assert studio.summarize(None)[1]["interactive"] is False

    def broken(*_, **__):
        raise RuntimeError("decoder exploded")

    frames = studio.generate(label=1, steps=16)
    *_, run = next(frames)
    studio.cache.get(None).render = broken
    with pytest.raises(gr.Error, match="something went wrong"):
        list(frames)
    assert "failed" in studio.summarize(run)[3]


def test_a_model_of_subclasses_offers_each_group_and_its_classes(tmp_path):
    """A model trained with --subclasses: the picker lists each group ("any", a value below -1) with
    its classes under it; picking a group gives image i the class of the group that seed + i draws."""
    import warnings

    import torch

    import arpg_core
    from app.handlers import FIRST_GROUP, Studio
    from app.models import ModelCache, ModelSpec

    torch.manual_seed(0)
    model = arpg_core.build_model(dict(dim=64, n_layer=2, n_head=1, vocab_size=64, num_classes=3, grid_size=16,
                                       multiple_of=32))
    torch.nn.init.normal_(model.embeddings.weight)  # classes that differ, so their images do
    model.class_names = ["Red / dark", "Red / light", "Blue / sky"]
    model.class_groups = ["Red", "Red", "Blue"]
    path = arpg_core.save_checkpoint(model, tmp_path / "sub.safetensors")
    vq = arpg_core.save_checkpoint(arpg_core.build_tokenizer("VQ-tiny"), tmp_path / "vq.safetensors")
    studio = Studio(ModelCache({"sub": ModelSpec("sub", str(path), str(vq), 4.0, "test")}))
    assert studio.class_choices() == [("Red (any)", FIRST_GROUP), ("Red / dark", 0), ("Red / light", 1),
                                      ("Blue (any)", FIRST_GROUP - 1), ("Blue / sky", 2),
                                      ("(no class: unconditional)", -1)]
    assert "3 classes in 2 groups" in studio.model_status("sub")

    def images(label, num_images=2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            *_, (gallery, *_) = studio.generate(label=label, seed=4, num_images=num_images, steps=2)
        return [np.asarray(im) for im in gallery]

    pipe = studio.pipeline("sub")
    picked = [pipe.group_label(0, seed) for seed in (4, 5)]  # image i of the run has seed 4 + i
    red = images(FIRST_GROUP)
    for i, k in enumerate(picked):
        assert np.array_equal(red[i], images(k)[i]) and not np.array_equal(red[i], images(1 - k)[i])
    assert np.array_equal(images(FIRST_GROUP - 1)[0], images(2)[0])
