"""Pixel pipeline and image input on tiny random models (fast, no assets needed)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import arpg_core
from arpg_core.imageio import ImageInputError, open_image
from arpg_core.pipeline import Pipeline, cell_grid, run_to_end
from arpg_core.sampling.options import SamplingOptions

FAST = SamplingOptions(steps=6)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    vq = arpg_core.build_tokenizer("VQ-tiny").eval()  # 32 px, 2 px per token, 64 codes
    model = arpg_core.build_model(dict(dim=64, n_layer=2, n_head=1, vocab_size=64, num_classes=3,
                                       grid_size=16, multiple_of=32)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return Pipeline(model, vq, class_names=["a", "b", "c"])


def picture(w=40, h=30) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_generate_frames_and_seeds(pipe):
    frames = list(pipe.generate([0, 2], seed=5, options=FAST))
    assert frames[0].step == 0 and (frames[0].tokens == arpg_core.UNKNOWN).all()
    assert [f.step for f in frames[1:]] == list(range(1, 7)) and frames[-1].done
    assert all(f.images is None for f in frames[:-1]) and len(frames[-1].images) == 2
    assert frames[-1].step_map.min() >= 1 and frames[-1].step_map.max() == 6
    # image 1 of a batch seeded 5 equals image 0 of a batch seeded 6
    alone = run_to_end(pipe.generate([2], seed=6, options=FAST))[0]
    assert np.array_equal(np.asarray(alone), np.asarray(frames[-1].images[1]))
    strip = pipe.render(frames[3].tokens, frames[3].positions, scale=2)
    assert strip.size == (2 * (2 * 32 + 1), 64)


def test_inpaint_keeps_unmasked_pixels(pipe):
    image = picture()
    mask = np.zeros((30, 40), bool)
    mask[10:18, 12:26] = True
    out = np.asarray(run_to_end(pipe.inpaint(image, mask, 1, seed=0, options=FAST))[0])
    assert out.shape == (30, 40, 3)
    far = np.ones_like(mask)
    far[4:24, 6:32] = False
    assert np.array_equal(out[far], np.asarray(image)[far])
    other = np.asarray(run_to_end(pipe.inpaint(image, mask, 1, seed=1, options=FAST))[0])
    assert np.array_equal(other[far], out[far])
    # new content depends on the seed (the picture's own tokens decoded back would not)
    assert (out[mask] != other[mask]).any(-1).mean() > 0.5


def test_inpaint_whole_image_and_bad_masks(pipe):
    image = picture()
    out = run_to_end(pipe.inpaint(image, np.ones((30, 40), bool), 0, options=FAST))[0]
    assert out.size == (40, 30)
    with pytest.raises(arpg_core.SamplingError, match="empty"):
        next(iter(pipe.inpaint(image, np.zeros((30, 40), bool), 0)))
    with pytest.raises(arpg_core.SamplingError, match="mask is"):
        pipe.inpaint(image, np.ones((5, 5), bool), 0)


def test_outpaint_contains_original(pipe):
    image = picture()
    frames = list(pipe.outpaint(image, (2, 3, 1, 4), 2, seed=1, options=FAST))
    out = np.asarray(frames[-1].images[0])
    rows, cols = cell_grid(40, 30, 16)
    fx, fy = 40 / (cols * 2), 30 / (rows * 2)
    top, left = round(2 * 2 * fy), round(4 * 2 * fx)
    assert np.array_equal(out[top:top + 30, left:left + 40], np.asarray(image))
    assert out.shape[0] > 30 and out.shape[1] > 40
    big = list(pipe.outpaint(image, (0, 12, 0, 12), 0, options=FAST))  # wider than 16 cells: windowed
    assert big[-1].tokens.shape[-1] == 16 + 24 and big[-1].done
    with pytest.raises(arpg_core.SamplingError, match="limit"):
        pipe.outpaint(image, (0, 40, 0, 0), 0)
    with pytest.raises(arpg_core.SamplingError, match="zero"):
        pipe.outpaint(image, (0, 0, 0, 0), 0)
    with pytest.raises(arpg_core.SamplingError, match="limit"):  # refused before a 10^14-cell canvas exists
        pipe.outpaint(image, (10**7, 10**7, 0, 0), 0)
    for bad in ((1.5, 0, 0, 0), ("a", 0, 0, 0), (1, 2)):
        with pytest.raises(arpg_core.SamplingError, match="whole numbers"):
            pipe.outpaint(image, bad, 0)


def test_outpaint_results_stay_under_the_pixel_limit(pipe, monkeypatch):
    import arpg_core.pipeline as pipeline_module

    image = picture(400, 300)  # 12 x 16 cells of 25 px: 4 more each side, 2 above and below: 600 x 400
    monkeypatch.setattr(pipeline_module, "MAX_PIXELS", 200_000)
    out = run_to_end(pipe.outpaint(image, (2, 4, 2, 4), 0, options=FAST))[0]
    assert 190_000 < out.width * out.height <= 200_000
    assert abs(out.width / out.height - 600 / 400) < 0.01  # the same layout, scaled as a whole
    red = Image.new("RGB", (438, 339), (255, 0, 0))  # a size where rounding each part apart left a 1 px strip
    for pad, corner in (((2, 0, 0, 4), (slice(-20, None), slice(-20, None))),
                        ((0, 3, 5, 0), (slice(0, 20), slice(0, 20)))):
        out = np.asarray(run_to_end(pipe.outpaint(red, pad, 0, options=FAST))[0]).astype(int)
        # the scaled original still reaches the edges that got no padding: no strip of generated pixels
        assert (np.abs(out[corner] - [255, 0, 0]) <= 2).all(), pad


def test_expand_keeps_the_proportions(pipe):
    for w, h in ((48, 32), (32, 48), (100, 10)):
        out = run_to_end(pipe.expand(picture(w, h), 0, options=FAST))[0]
        long, short = max(out.size), min(out.size)
        assert (out.width > out.height) == (w > h)
        assert long == 2 * pipe.cell * max(cell_grid(w, h, 16))  # the resolution of the doubled grid
        assert abs(short - long * min(w, h) / max(w, h)) <= 0.5, (w, h, out.size)  # the source's proportions


def test_a_bf16_tokenizer_encodes_and_decodes(pipe):
    vq16 = arpg_core.build_tokenizer("VQ-tiny").eval()
    vq16.load_state_dict(pipe.tokenizer.state_dict())
    half = Pipeline(pipe.model, vq16.to(torch.bfloat16), class_names=["a", "b", "c"])
    image = picture(32, 32)
    same = (half.encode(image, (16, 16)) == pipe.encode(image, (16, 16))).float().mean().item()
    assert same > 0.9  # bf16 rounding may move a few codes, not the picture
    assert run_to_end(half.inpaint(image, np.ones((32, 32), bool), 0, options=FAST))[0].size == (32, 32)


def test_expand_doubles_the_grid(pipe):
    image = picture(32, 32)
    for windowed in (True, False):
        frames = list(pipe.expand(image, 0, options=FAST, windowed=windowed))
        assert frames[-1].images[0].size == (64, 64)
        source = pipe.encode(image, (16, 16))
        assert torch.equal(frames[-1].tokens[0, ::2, ::2], source)


def test_unknown_class(pipe):
    with pytest.raises(arpg_core.SamplingError, match="class 7"):
        pipe.generate([7])


def encoded(image: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_open_image_modes_and_orientation():
    rgb = Image.new("RGB", (8, 4), (10, 20, 30))
    grey = [18] * 3  # (10, 20, 30) as luma
    palette = lambda mode: np.asarray(rgb.convert(mode).convert("RGB"))[1, 1].tolist()  # PIL's own rendering
    expected = {"L": grey, "LA": grey, "I;16": grey, "I": grey, "F": grey, "P": palette("P"), "CMYK": [10, 20, 30],
                "RGBA": [10, 20, 30], "1": palette("1")}
    for mode, value in expected.items():
        out = open_image(encoded(rgb.convert(mode), "TIFF" if mode in ("CMYK", "F", "I") else "PNG"))
        assert out.mode == "RGB" and out.size == (8, 4), mode
        # a float image of 8-bit levels used to come out white
        assert np.abs(np.asarray(out)[1, 1].astype(int) - value).max() <= 2, (mode, np.asarray(out)[1, 1])
    fraction = Image.fromarray(np.full((4, 8), 0.5, np.float32))
    assert np.asarray(open_image(encoded(fraction, "TIFF")))[0, 0].tolist() == [128, 128, 128]
    overshoot = np.linspace(0, 1.02, 5, dtype=np.float32)[None].repeat(2, 0)  # a resized float array
    assert np.asarray(open_image(overshoot))[0, :, 0].tolist() == [0, 65, 130, 195, 255]
    sixteen = Image.fromarray(np.full((4, 8), 65535, np.uint16))
    assert np.asarray(open_image(encoded(sixteen)))[0, 0].tolist() == [255, 255, 255]
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(open_image(encoded(clear)))[0, 0].tolist() == [255, 255, 255]  # transparency -> white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a portrait photo stored landscape
    rotated = open_image(encoded(rgb, "JPEG", exif=exif.tobytes()))
    assert rotated.size == (4, 8)


def test_open_image_refuses_bad_input():
    with pytest.raises(ImageInputError, match="not an image"):
        open_image(b"definitely not an image")
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        open_image(encoded(picture(), "PNG")[:200])
    with pytest.raises(ImageInputError, match="limit"):
        open_image(encoded(Image.new("RGB", (300, 300))), max_pixels=10_000)
    lazy = Image.open(io.BytesIO(encoded(picture(), "PNG")[:200]))  # opened, not yet decoded
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        open_image(lazy)
    assert open_image(np.zeros((4, 8, 1), np.uint8)).size == (8, 4)  # one channel as a trailing axis
    for shape in ((4, 8, 5), (4,), (2, 4, 8, 3)):
        with pytest.raises(ImageInputError, match=r"\[H, W\]"):
            open_image(np.zeros(shape, np.uint8))
    premultiplied = Image.new("RGBa", (4, 4), (0, 0, 0, 0))  # how Pillow opens a TIFF with associated alpha
    assert np.asarray(open_image(premultiplied))[0, 0].tolist() == [255, 255, 255]


def test_generate_refuses_odd_grids(pipe):
    for grid in ((-1, 4), (0, 4), (4.5, 4), ("4", 4), (49, 4), (4, 4, 4)):
        with pytest.raises(arpg_core.SamplingError, match="grid|canvas"):
            pipe.generate([0], grid=grid)


def test_load_names_from_the_file_or_the_caller(pipe, tmp_path):
    model_path, vq_path = tmp_path / "m.safetensors", tmp_path / "vq.safetensors"
    arpg_core.save_checkpoint(pipe.model, model_path, class_names=["x", "y", "z"])
    arpg_core.save_checkpoint(pipe.tokenizer, vq_path)
    assert Pipeline.load(model_path, vq_path, device="cpu").class_names == ["x", "y", "z"]
    assert Pipeline.load(model_path, vq_path, device="cpu", class_names=["p", "q", "r"]).class_names == ["p", "q", "r"]
    with pytest.raises(arpg_core.ConfigError, match="2 class names"):
        Pipeline.load(model_path, vq_path, device="cpu", class_names=["p", "q"])


def test_dilation_matches_a_max_filter():
    from PIL import ImageFilter

    from arpg_core.pipeline import _dilate

    rng = np.random.default_rng(3)
    for shape, radius in (((37, 53), 1), ((64, 40), 5), ((20, 20), 30), ((1, 9), 2)):
        mask = rng.random(shape) < 0.03
        ref = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * radius + 1))
        assert np.array_equal(_dilate(mask, radius), np.asarray(ref) > 0), (shape, radius)


def test_small_marks_big_images_and_thin_strips(pipe):
    big = Image.fromarray(np.random.default_rng(2).integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
    dot = np.zeros((1024, 1024), bool)
    dot[500:502, 500:502] = True  # 4 px of a 64x64-px cell: a uint8 box average rounded it to "empty"
    out = np.asarray(run_to_end(pipe.inpaint(big, dot, 0, options=FAST))[0])
    assert np.array_equal(out[:300], np.asarray(big)[:300])
    assert not np.array_equal(out[500:502, 500:502], np.asarray(big)[500:502, 500:502])
    part = np.zeros((1024, 1024), bool)
    part[256:512, 256:512] = True  # 4x4 cells plus a margin: 64 steps scale to the share of tokens left
    frames = list(pipe.inpaint(big, part, 0, options=SamplingOptions(steps=64)))
    todo = int((frames[0].tokens == arpg_core.UNKNOWN).sum())
    assert todo == 36 and frames[-1].step == round(64 * todo / 256)
    strip = picture(64, 4)  # a 1x16 token grid: 16 tokens, fewer than the 32 steps asked for
    frames = list(pipe.inpaint(strip, np.ones((4, 64), bool), 0, options=SamplingOptions(steps=32)))
    assert frames[-1].done and frames[-1].step == 16 and frames[-1].images[0].size == (64, 4)


def test_out_of_range_seed_is_a_typed_error(pipe):
    with pytest.raises(arpg_core.SamplingError, match="seed"):
        next(iter(pipe.generate([0], seed=2**64, options=FAST)))


def test_outpaint_sizes_match_the_frame_and_tiny_images_grow(pipe):
    from arpg_core.pipeline import source_px_per_cell

    out = run_to_end(pipe.outpaint(picture(1, 1), (1, 0, 0, 0), 0, options=FAST))[0]
    assert out.size == (16, 17)  # one pixel per cell at least; it came back as the 1x1 input before
    rows, cols = cell_grid(100, 75, 16)  # 12 x 16 cells of 6.25 px: 18 cells make 112.5 px
    px_x, px_y = source_px_per_cell(100, 75, rows, cols)
    out = run_to_end(pipe.outpaint(picture(100, 75), (0, 2, 0, 0), 0, options=FAST))[0]
    assert out.size == (113, 75)  # halves up, as the frame's Math.round (round() gave 112)
    assert (px_x, px_y) == (6.25, 6.25)
