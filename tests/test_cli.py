"""The `arpg` command line on the embedded model: torchrun parity, resume, npz layout, editing."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--steps", "8"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def arpg(*args, check=True, timeout=300):
    out = subprocess.run([sys.executable, "-m", "arpg_core.cli", *args], capture_output=True, text=True,
                         env=env(), timeout=timeout, cwd=ROOT)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_torchrun_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["sample", "--classes", "0-2", "--per-class", "2", "--batch-size", "1", *FAST]
    arpg(*common, "--out", str(one))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "arpg_core.cli", *common,
                          "--out", str(two)], capture_output=True, text=True, env=env(), timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert pngs(one) == pngs(two) == [f"{i:06d}.png" for i in range(6)]
    for name in pngs(one):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    data = np.load(one / "samples_6.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (6, 64, 64, 3)
    assert np.array_equal(data["arr_0"], np.load(two / "samples_6.npz")["arr_0"])
    # image i is seeded seed + i, whichever process draws it: same class, next seed, another image
    assert not np.array_equal(data["arr_0"][0], data["arr_0"][1])
    assert not np.array_equal(data["arr_0"][0], data["arr_0"][2])


def test_killed_run_resumes_without_redoing(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "arpg_core.cli", "sample", "--classes", "all", "--per-class", "2",
           "--batch-size", "1", *FAST, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while len(pngs(out) if out.exists() else []) < 4 and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    done = {name: (out / name).stat().st_mtime_ns for name in pngs(out)}
    assert 4 <= len(done) < 18, "the run should have been killed half-way"
    arpg("sample", "--classes", "all", "--per-class", "2", "--batch-size", "1", *FAST, "--out", str(out))
    assert pngs(out) == [f"{i:06d}.png" for i in range(18)]
    for name, mtime in done.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert np.load(out / "samples_18.npz")["arr_0"].shape == (18, 64, 64, 3)


def make_image(path: Path, size=(64, 64)) -> np.ndarray:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    array[:, : size[0] // 2] = (30, 144, 255)
    Image.fromarray(array).save(path)
    return array


def test_editing_commands_keep_known_pixels(tmp_path):
    src = make_image(tmp_path / "in.png", (80, 64))
    mask = np.zeros((64, 80), np.uint8)
    mask[16:40, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    arpg("inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--class", "0",
         *FAST, "--out", str(tmp_path / "inpainted.png"))
    result = np.asarray(Image.open(tmp_path / "inpainted.png"))
    assert result.shape == src.shape
    far = np.ones((64, 80), bool)
    far[8:48, 12:58] = False  # the mask plus its feathered rim
    assert np.array_equal(result[far], src[far])
    assert not np.array_equal(result[16:40, 20:50], src[16:40, 20:50])

    arpg("outpaint", "--image", str(tmp_path / "in.png"), "--pad", "0,4,0,4", *FAST,
         "--out", str(tmp_path / "wide.png"))
    wide = np.asarray(Image.open(tmp_path / "wide.png"))
    assert wide.shape == (64, 120, 3)  # 16 cells of 5 px across: 4 more each side
    left = round(4 * 4 * 80 / 64)  # 4 cells of 4 px at the image's scale of 80/64
    assert np.array_equal(wide[:, left:left + 80], src)

    arpg("expand", "--image", str(tmp_path / "in.png"), *FAST, "--out", str(tmp_path / "big.jpg"))
    with Image.open(tmp_path / "big.jpg") as big:  # the extension picks the format
        assert big.format == "JPEG" and big.size == (128, 102)  # 80:64 kept (the cells alone made 128x104)
    arpg("expand", "--image", str(tmp_path / "in.png"), *FAST, "--out", str(tmp_path / "results.v2"))
    assert (tmp_path / "results.v2" / "in_expand.png").is_file()  # a dotted folder name is a folder


def test_clear_errors(tmp_path):
    make_image(tmp_path / "in.png")
    Image.new("L", (10, 10)).save(tmp_path / "small_mask.png")
    cases = [
        (["sample", "--classes", "99", "--out", str(tmp_path / "x")], "out of range"),
        (["sample", "--classes", "a-b", "--out", str(tmp_path / "x")], "--classes"),
        (["sample", "--out", "/proc/forbidden/out"], "cannot write"),
        (["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "small_mask.png"),
          "--out", str(tmp_path / "o.png")], "10x10 but the image is 64x64"),
        (["outpaint", "--image", str(tmp_path / "in.png"), "--pad", "1,2", "--out", str(tmp_path / "o.png")],
         "--pad"),
        (["expand", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o.png")], "no such image"),
        (["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "missing.png"),
          "--out", str(tmp_path / "o.png")], "cannot read mask"),
        (["sample", "--seed", str(2**64), "--out", str(tmp_path / "x")], "out of range"),
        (["expand", "--image", str(tmp_path / "in.png"), "--device", "gpu", "--out", str(tmp_path / "o.png")],
         "not a device torch knows"),
        (["expand", "--image", str(tmp_path / "in.png"), "--device", "cuda:99", "--out", str(tmp_path / "o.png")],
         "--device cuda:99"),  # no GPU here, or no 100th one on a GPU machine
        # inputs are checked before the model loads: a missing model file is not what is reported
        *[(["outpaint", "--image", str(tmp_path / "in.png"), *extra, "--model", str(tmp_path / "none.pt"),
            "--out", str(tmp_path / out)], message) for extra, out, message in (
            (["--pad", "x"], "o.png", "--pad"),
            (["--pad", "10000000"], "o.png", "limit is 48"),
            (["--pad", "2", "--seed", str(2**64)], "o.png", "out of range"),
            (["--pad", "2"], "o.psd", "cannot write .psd"),
        )],
    ]
    for args, message in cases:
        out = arpg(*args, check=False)
        assert out.returncode == 2, args
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_step_attention_reaches_the_sampler(tmp_path):
    images = {}
    for mode in ("causal", "full"):
        arpg("sample", "--classes", "0", *FAST, "--step-attention", mode, "--out", str(tmp_path / mode))
        images[mode] = np.asarray(Image.open(tmp_path / mode / pngs(tmp_path / mode)[0]))
    assert images["causal"].shape == images["full"].shape and not np.array_equal(images["causal"], images["full"])


@pytest.mark.parametrize("command", ["sample", "inpaint", "outpaint", "expand"])
def test_help_for_every_subcommand(command):
    out = arpg(command, "--help")
    assert "--steps" in out.stdout and "--model" in out.stdout


def test_mask_files_read_as_painted(tmp_path):
    """White = regenerate; alpha only decides for a layer with transparency (an opaque black/white RGBA
    export used to read as all-regenerate)."""
    from arpg_core.cli import CLIError, read_mask

    bw = np.zeros((8, 8, 4), np.uint8)
    bw[..., 3] = 255
    bw[2:4, 2:4, :3] = 255
    Image.fromarray(bw, "RGBA").save(tmp_path / "opaque.png")
    layer = np.zeros((8, 8, 4), np.uint8)
    layer[5:7, 1:3] = (200, 40, 40, 255)  # a red stroke on a clear canvas
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    assert read_mask(str(tmp_path / "opaque.png"), (8, 8)).sum() == 4
    assert np.argwhere(read_mask(str(tmp_path / "layer.png"), (8, 8))).tolist() == [[5, 1], [5, 2], [6, 1], [6, 2]]
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(CLIError, match="cannot read mask"):
        read_mask(str(tmp_path / "text.png"), (8, 8))
    # an indexed PNG whose index 0 is clear: red strokes on it once read as nothing, black ones as everything else
    for stroke in ((200, 40, 40), (0, 0, 0)):
        pal = Image.new("P", (8, 8), 0)
        pal.putpalette([255, 255, 255, *stroke] + [0] * 762)
        pal.info["transparency"] = 0
        pal.paste(1, (1, 5, 3, 7))
        pal.save(tmp_path / "pal.png", transparency=0)
        assert np.argwhere(read_mask(str(tmp_path / "pal.png"), (8, 8))).tolist() == [[5, 1], [5, 2], [6, 1], [6, 2]]
    # EXIF orientation 6 (stored 4x8, shown 8x4): turned as the picture is, so it lines up with it
    stored = np.zeros((8, 4), np.uint8)
    stored[0, 0] = 255  # top-left as stored: top-right once turned
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    turned = read_mask(str(tmp_path / "turned.jpg"), (8, 4))
    assert turned.shape == (4, 8) and turned[0, 7] and not turned[0, 0]
    with pytest.raises(CLIError, match="turned.jpg is 8x4 but the image is 8x8"):
        read_mask(str(tmp_path / "turned.jpg"), (8, 8))


def test_class_ranges_are_checked_before_they_are_built():
    from arpg_core.cli import CLIError, parse_classes

    assert parse_classes("0-2,5", 9) == [0, 1, 2, 5]
    with pytest.raises(CLIError, match=r"\[1000000000\] out of range"):
        parse_classes("0-1000000000", 9)  # once a list of a billion numbers first
    with pytest.raises(CLIError, match="names no class"):
        parse_classes("5-2", 9)


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    """A rerun fills in the images a run left out; with other classes, seed or options it would mix two
    runs into one folder (and one .npz) without a word."""
    out = tmp_path / "run"
    arpg("sample", "--classes", "0", "--per-class", "2", *FAST, "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "sample-run.json", "samples_2.npz"]
    again = arpg("sample", "--classes", "1", "--per-class", "2", "--seed", "3", *FAST, "--out", str(out), check=False)
    assert again.returncode != 0 and "labels, seed differ" in again.stderr and "Traceback" not in again.stderr
    (out / "sample-run.json").unlink()  # a folder of numbered images from unknown settings
    unknown = arpg("sample", "--classes", "0", "--per-class", "2", *FAST, "--out", str(out), check=False)
    assert unknown.returncode != 0 and "unknown settings" in unknown.stderr


def test_images_are_written_under_a_hidden_name_first(tmp_path):
    from arpg_core.cli import save_image

    seen = []
    real_save = Image.Image.save

    def spy(image, fp, *args, **kwargs):
        seen.append(Path(fp).name)
        return real_save(image, fp, *args, **kwargs)

    Image.Image.save = spy
    try:
        save_image(Image.new("RGB", (4, 4)), tmp_path / "000003.png")
    finally:
        Image.Image.save = real_save
    assert seen == [".000003.png.part"] and pngs(tmp_path) == ["000003.png"]


def test_npz_names_missing_images(tmp_path):
    from arpg_core.cli import CLIError, write_npz

    Image.new("RGB", (4, 4)).save(tmp_path / "000000.png")
    with pytest.raises(CLIError, match="1 of the 2 images .* share"):
        write_npz(tmp_path, 2)
    Image.new("RGB", (8, 8)).save(tmp_path / "000001.png")
    with pytest.raises(CLIError, match="000001.png is 8x8, the others 4x4"):
        write_npz(tmp_path, 2)


def test_bench_takes_its_own_options():
    out = arpg("bench", "--help")
    assert "--quick" in out.stdout


def test_bench_kv_cache_counts_like_for_like():
    """ARPG-L (24 layers, dim 1024), 64 arccos steps, CFG rows, bf16: 12 content layers plus the
    shared K/V hold the class token and the 228 tokens before the last step (the last step decodes 28);
    a raster model holds every layer for the class token and all tokens but the last."""
    import torch

    from arpg_core.bench import cache_case, time_side_by_side
    from arpg_core.models.arpg import ARPG, ARPGConfig

    row = cache_case("ARPG-L", ARPGConfig.from_name("ARPG-L"), 64, torch.bfloat16)
    per_token_layer = 2 * 2 * 1024 * 2  # K and V, two CFG rows, 2 bytes
    assert row["kv_cache_bytes"] == 13 * 229 * per_token_layer
    assert row["raster_kv_cache_bytes"] == 24 * 256 * per_token_layer
    tiny = ARPG(ARPGConfig(**{**ARPGConfig.PRESETS["ARPG-tiny"], "grid_size": 4})).eval()
    times = time_side_by_side(tiny, 2, 1, {"a": dict(steps=4), "b": dict(steps=16, order="raster")})
    assert set(times) == {"a", "b"} and min(times.values()) > 0


def test_groups_pick_the_classes_of_a_model_of_subclasses(tmp_path):
    """--groups: --classes names groups, and image i takes the class of its group that seed + i draws;
    --group does the same for an edit. A model without groups refuses both in one line."""
    import json

    import torch

    import arpg_core

    torch.manual_seed(0)
    model = arpg_core.build_model(dict(dim=64, n_layer=2, n_head=1, vocab_size=64, num_classes=3, grid_size=16,
                                       multiple_of=32))
    model.class_names, model.class_groups = ["Red / dark", "Red / light", "Blue / sky"], ["Red", "Red", "Blue"]
    files = ["--model", str(arpg_core.save_checkpoint(model, tmp_path / "sub.safetensors")), "--tokenizer",
             str(arpg_core.save_checkpoint(arpg_core.build_tokenizer("VQ-tiny"), tmp_path / "vq.safetensors"))]
    arpg("sample", *files, "--groups", "--classes", "all", "--per-class", "3", "--seed", "1", "--steps", "2",
         "--out", str(tmp_path / "out"))
    record = json.loads((tmp_path / "out" / "sample-run.json").read_text())
    from arpg_core.classes import group_label

    red = [group_label(model.class_groups, 0, seed) for seed in (1, 2, 3)]  # images 0-2: seeds 1-3
    assert record["labels"] == [*red, 2, 2, 2] and set(record["labels"][:3]) <= {0, 1}
    fox = str(ROOT / "assets" / "examples" / "fox.png")
    arpg("inpaint", *files, "--image", fox, "--mask", fox, "--group", "1", "--steps", "2", "--out",
         str(tmp_path / "e.png"))
    assert Image.open(tmp_path / "e.png").size == (64, 64)
    out = arpg("inpaint", *files, "--image", fox, "--mask", fox, "--group", "2", "--steps", "2", "--out",
               str(tmp_path / "f.png"), check=False)
    assert out.returncode != 0 and "--group 2 out of range: this model has groups 0..1" in out.stderr
    plain = arpg("sample", "--groups", "--classes", "0", "--steps", "2", "--out", str(tmp_path / "p"), check=False)
    assert plain.returncode != 0 and "--groups needs a model trained on subclasses" in plain.stderr
    assert "Traceback" not in plain.stderr + out.stderr
