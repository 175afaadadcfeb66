import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arpg_core.data.folder import ImageFolderDataset
from arpg_core.errors import DataError
from arpg_core.loading import load_tokenizer
from arpg_core.training import common
from arpg_core.training.train_vq import main, reconstruction_loss


def _make_folder(root, n_per_class=4, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(["0_red", "1_blue"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n_per_class if split == "train" else 1):
                array = np.full((size, size, 3), 255, np.uint8)
                array[8:24, 8:24, label * 2] = rng.integers(0, 255)
                Image.fromarray(array).save(folder / f"{i}.png")
    return root / "train"


def test_folder_dataset(tmp_path):
    train = _make_folder(tmp_path)
    ds = ImageFolderDataset(train, 16)
    image, label = ds[0]
    assert ds.class_names == ["0_red", "1_blue"] and ds.class_counts() == [4, 4]
    assert image.shape == (3, 16, 16) and label == 0
    assert -1 <= image.min() and image.max() <= 1 and image[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    flat = ImageFolderDataset(train / "1_blue", 16)
    assert flat.num_classes == 1 and len(flat) == 4
    with pytest.raises(DataError):
        ImageFolderDataset(tmp_path / "missing", 16)


def test_train_then_resume(tmp_path):
    data, out = _make_folder(tmp_path), tmp_path / "run"
    common_args = f"--data {data} --config VQ-tiny --out {out} --batch-size 4 --eval-every 3".split()
    common_args += "--save-every 100 --reinit-every 2 --warmup 1 --threads 1".split()
    main(common_args + ["--steps", "3"])
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 3
    main(common_args + ["--steps", "5"])
    state = common.load_checkpoint(out / common.CHECKPOINT_NAME)
    assert state["step"] == 5
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 5]
    assert (out / "samples" / "step_000005.png").is_file() and (out / "vq.safetensors").is_file()


class StopAfter:
    """Stands in for common.StopFlag: reports a stop request after `n` loop checks (as if Ctrl-C)."""

    def __init__(self, n: int):
        self.n, self.reads = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @property
    def stop(self) -> bool:
        self.reads += 1
        return self.reads > self.n


def test_flat_folder_without_val_is_measured_and_exported(tmp_path):
    data, out = _make_folder(tmp_path) / "0_red", tmp_path / "run"  # flat folder, no 'val' sibling
    main(f"--data {data} --config VQ-tiny --out {out} --batch-size 4 --steps 2 --eval-every 2 --threads 1".split())
    record = json.loads((out / "eval.jsonl").read_text())
    assert record["step"] == 2 and record["train_psnr"] > 0 and "val_psnr" not in record
    assert load_tokenizer(out / "vq.safetensors").config.image_size == 32


def test_stopped_run_exports_the_weights_it_reached(tmp_path, monkeypatch):
    data, out = _make_folder(tmp_path), tmp_path / "run"
    monkeypatch.setattr(common, "StopFlag", lambda: StopAfter(3))
    main(f"--data {data} --config VQ-tiny --out {out} --batch-size 4 --steps 50 --eval-every 20 --threads 1".split())
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 3
    assert [json.loads(line)["step"] for line in (out / "eval.jsonl").read_text().splitlines()] == [3]
    assert (out / "vq.safetensors").is_file()


def test_decoder_only_keeps_the_codes(tmp_path):
    data, base, tuned = _make_folder(tmp_path), tmp_path / "base", tmp_path / "tuned"
    args = f"--data {data} --batch-size 4 --eval-every 2 --save-every 100 --warmup 1 --threads 1 --steps 2".split()
    main(args + ["--config", "VQ-tiny", "--out", str(base)])
    with pytest.raises(SystemExit, match="needs --init"):
        main(args + ["--out", str(tmp_path / "no-init"), "--decoder-only"])
    with pytest.raises(SystemExit, match="without --decoder-only"):
        main(args + ["--out", str(base), "--decoder-only", "--steps", "3"])
    pure_mse = ["--l1-weight", "0", "--edge-weight", "0"]
    init = ["--init", str(base / "vq.safetensors")]
    main(args + ["--out", str(tuned), *init, "--decoder-only", "--lr", "1e-2", *pure_mse])
    before, after = load_tokenizer(base / "vq.safetensors"), load_tokenizer(tuned / "vq.safetensors")
    changed = {k.split(".")[0] for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert changed == {"decoder", "post_quant_conv"}
    images = ImageFolderDataset(data, before.config.image_size).load_all()[0]
    assert torch.equal(before.encode(images), after.encode(images))


def test_reconstruction_loss_terms():
    recon, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    terms = reconstruction_loss(recon, target, edge_weight=0.0, l1_weight=0.0)
    assert set(terms) == {"mse"} and terms["mse"].item() == pytest.approx(1.0)
    terms = reconstruction_loss(recon, target, edge_weight=0.5, l1_weight=2.0)
    assert terms["l1"].item() == pytest.approx(2.0) and terms["edge"].item() == 0.0
    step = torch.ones(1, 3, 4, 4)
    step[..., :2] = -1  # one vertical edge of height 2 across 3 column gaps: |dx| averages 2/3, dy is 0
    assert reconstruction_loss(recon, step, edge_weight=0.5)["edge"].item() == pytest.approx(0.5 * 2 / 3)


def test_psnr_loss_weighs_images_by_their_relative_error():
    target = torch.zeros(2, 3, 4, 4)
    recon = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.4)]).requires_grad_(True)
    loss = reconstruction_loss(recon, target, 0.0, 0.0, mse="psnr")["log_mse"]
    m = torch.tensor([0.01, 0.16])
    assert loss.item() == pytest.approx((m.log().mean() * m.mean()).item(), rel=1e-5)
    loss.backward()
    # d/dx of log(x^2) is 2/x: the image with 4x the error gets 1/4 the push per pixel (pooled: 4x)
    assert (recon.grad[0] / recon.grad[1]).mean().item() == pytest.approx(4.0, rel=1e-4)


def test_lr_and_balance():
    assert common.lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert common.lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert common.lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    weights = common.class_balanced_weights([0, 0, 0, 1], alpha=1.0)
    assert weights[:3].sum() == pytest.approx(weights[3])
    groups = common.param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)), 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3]


def test_bf16_note_reads_the_cpu_flags(tmp_path):
    def cpu(flags: str) -> Path:
        path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
        path.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        return path

    plain, amx, bf16 = cpu("fpu sse avx2 avx512f avx512bw"), cpu("avx512f amx_bf16 amx_tile"), cpu("avx512_bf16")
    assert [common.native_bf16(p) for p in (plain, amx, bf16)] == [False, True, True]
    assert common.native_bf16(tmp_path / "missing") is None and common.native_bf16(cpu("")) is False
    assert "3x slower" in common.bf16_note(True, plain)
    assert common.bf16_note(False, plain) is None and common.bf16_note(True, amx) is None
    assert common.bf16_note(True, tmp_path / "missing") is None  # unknown CPU: say nothing
    no_flags = tmp_path / "noflags"
    no_flags.write_text("processor\t: 0\n")
    assert common.native_bf16(no_flags) is None


def test_eval_vq_reports_psnr_and_codes(tmp_path, capsys):
    from arpg_core.training import eval_vq

    data, out = _make_folder(tmp_path), tmp_path / "run"
    main(f"--data {data} --config VQ-tiny --out {out} --batch-size 4 --steps 2 --eval-every 2 --threads 1".split())
    tok = load_tokenizer(out / "vq.safetensors")
    results = eval_vq.main(["--tokenizer", str(out / "vq.safetensors"), "--data", str(data), str(data.parent / "val")])
    train, val = results
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()[-2:]] == results
    assert train["images"] == 8 and val["images"] == 2 and set(train["psnr_db_per_class"]) == {"0_red", "1_blue"}
    images = ImageFolderDataset(data.parent / "val", tok.config.image_size).load_all()[0]
    with torch.no_grad():
        codes = tok.encode(images)
        expected = eval_vq.psnr_per_image(tok.decode(codes), images).mean().item()
    assert val["psnr_db"] == pytest.approx(expected, abs=0.01)
    assert val["codes_used"] == codes.unique().numel() and 1.0 <= val["perplexity"] <= val["codes_used"]
    with pytest.raises(SystemExit, match="eval_vq: error: image folder .*nope does not exist"):
        eval_vq.main(["--tokenizer", str(out / "vq.safetensors"), "--data", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="--batch-size and --threads must be at least 1"):
        eval_vq.main(["--tokenizer", str(out / "vq.safetensors"), "--data", str(data), "--batch-size", "0"])


def test_code_stats():
    from arpg_core.training.eval_vq import code_stats, psnr_per_image

    assert code_stats(torch.tensor([0, 1, 2, 3]), 8) == {"codes_used": 4, "usage": 0.5, "perplexity": 4.0}
    assert code_stats(torch.tensor([5, 5, 5]), 8) == {"codes_used": 1, "usage": 0.125, "perplexity": 1.0}
    same = torch.zeros(2, 3, 4, 4)
    assert psnr_per_image(same, same).tolist() == [100.0, 100.0]  # clamped, not inf
    assert psnr_per_image(torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)).item() == pytest.approx(0.0)


def test_held_out_folder_keeps_the_training_labels_and_junk_is_skipped(tmp_path):
    train = _make_folder(tmp_path)
    (train / "0_red" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS copy debris
    (train / "__MACOSX").mkdir()
    (train / "2_empty").mkdir()
    ds = ImageFolderDataset(train, 16)
    assert ds.class_names == ["0_red", "1_blue"] and len(ds) == 8 and ds.empty_classes == ["2_empty"]
    ds.load_all()  # the debris file is never read
    val = tmp_path / "val"
    for f in (val / "0_red").iterdir():
        f.unlink()
    (val / "0_red").rmdir()  # a class without held-out images must not shift the others
    assert ImageFolderDataset(val, 16, classes=ds.class_names).labels == [1]
    (val / "9_new").mkdir()
    Image.new("RGB", (8, 8)).save(val / "9_new" / "a.png")
    with pytest.raises(DataError, match="9_new"):
        ImageFolderDataset(val, 16, classes=ds.class_names)
    before = ds.fingerprint()
    Image.new("RGB", (8, 8)).save(train / "1_blue" / "extra.png")
    assert ImageFolderDataset(train, 16).fingerprint() != before


def test_init_with_a_json_config_and_bad_json(tmp_path):
    from arpg_core import build_tokenizer, save_checkpoint
    from arpg_core.tokenizer.vq import VQConfig

    data, out = _make_folder(tmp_path), tmp_path / "run"
    init = save_checkpoint(build_tokenizer("VQ-tiny"), tmp_path / "init.safetensors")
    config = tmp_path / "vq.json"
    config.write_text(json.dumps(VQConfig.from_name("VQ-tiny").to_dict()))
    main(f"--data {data} --init {init} --config {config} --out {out} --batch-size 4 --steps 1 --threads 1".split())
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 1
    config.write_text("{not json")
    with pytest.raises(SystemExit, match="not readable JSON"):
        main(f"--data {data} --config {config} --out {tmp_path / 'b'} --batch-size 4 --steps 1".split())


def test_emoji_builder_names_what_to_install(tmp_path, monkeypatch):
    from arpg_core.data import emoji

    with pytest.raises(DataError, match="fonts-noto-color-emoji unicode-data"):
        emoji.check_sources(tmp_path / "emoji-test.txt", tmp_path / "font.ttf")
    if not (emoji.EMOJI_TEST.is_file() and emoji.EMOJI_FONT.is_file()):
        pytest.skip("the Debian emoji packages are not installed")
    emoji.check_sources()
    monkeypatch.setattr(emoji.features, "check", lambda name: False)  # a Pillow without Raqm layout
    with pytest.raises(DataError, match="Raqm"):
        emoji.check_sources()


def test_emoji_builder_renders_a_trimmed_list(tmp_path):
    """The real font and the real list, cut to the first three entries of each group plus a flag and
    a family (sequences that need Raqm layout): folders per group in file order, the fixed split,
    each glyph centred on white, a flag drawn as one glyph rather than two letters."""
    from arpg_core.data import emoji

    if not (emoji.EMOJI_TEST.is_file() and emoji.EMOJI_FONT.is_file()):
        pytest.skip("the Debian emoji packages are not installed")
    kept, taken, sequences = [], 0, ("1F1EF 1F1F5 ", "1F468 200D 1F469 200D 1F467 ")  # Japan, a family
    for line in emoji.EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            kept.append(line)
            taken = 0
        elif "; fully-qualified" in line and (taken < 3 or line.startswith(sequences)):
            kept.append(line)
            taken += 1
    trimmed = tmp_path / "emoji-test.txt"
    trimmed.write_text("\n".join(kept) + "\n", encoding="utf-8")
    groups, entries = emoji.parse_emoji_test(trimmed)
    assert groups[0] == "Smileys & Emotion" and groups[-1] == "Flags" and len(groups) == 9  # Component skipped
    meta = emoji.build(tmp_path / "out", 32, emoji_test=trimmed)
    assert meta["folders"][0] == "0_smileys-emotion" and not meta["skipped_empty"]
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert len(files) == len(entries) == sum(sum(c.values()) for c in meta["counts"].values())
    for file in files:  # <split>/<group>/<subgroup>/<codepoints>.png
        assert file.parents[2].name == emoji.split_of(file.stem)
        assert meta["subclasses"][f"{file.parents[1].name}/{file.parent.name}"].startswith(
            meta["classes"][meta["folders"].index(file.parents[1].name)] + " / ")
        pixels = np.asarray(Image.open(file))
        assert pixels.shape == (32, 32, 3) and (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()
        assert (pixels[12:20, 12:20] < 250).any(), f"{file.name}: nothing drawn in the middle"
    japan = np.asarray(Image.open(next(f for f in files if f.stem == "1F1EF-1F1F5"))).astype(int)
    # one flag fills the width; two regional-indicator letters side by side would leave a gap between them
    ink = (np.abs(japan - 255).sum(-1) > 30).any(0)
    assert ink[4:28].all(), "the flag of Japan rendered as separate glyphs"
    with pytest.raises(SystemExit):
        emoji.main(["--out", str(tmp_path / "x"), "--size", "0"])


def test_nested_stray_and_unreadable_files(tmp_path, capsys):
    train = _make_folder(tmp_path)
    (train / "0_red" / "2020").mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(train / "0_red" / "2020" / "deep.png")  # belongs to 0_red
    (train / "0_red" / ".cache").mkdir()
    Image.new("RGB", (20, 20)).save(train / "0_red" / ".cache" / "thumb.png")  # hidden: not data
    Image.new("RGB", (20, 20)).save(train / "stray.png")
    (train / "1_blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = ImageFolderDataset(train, 16)
    assert ds.class_counts() == [5, 5] and any("ignoring 1 image" in n for n in ds.notes())
    images, labels = ds.load_all()
    assert len(images) == 9 and labels.tolist().count(1) == 4
    assert "skipping 1 unreadable file(s): 1_blue/broken.png" in capsys.readouterr().out
    for f in (train / "1_blue").glob("*.png"):
        f.write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 5 images"):
        ImageFolderDataset(train / "1_blue", 16).load_all()


def test_subclasses_are_the_sub_folders_of_the_class_folders(tmp_path):
    """subclasses=True: each sub-folder of a class folder is a class ("class/sub"), grouped under its
    class; loose images are the class folder's own class; a held-out folder numbers them the same."""
    train = tmp_path / "train"
    for path in ("0_red/a/1.png", "0_red/a/deep/2.png", "0_red/b/3.png", "0_red/4.png", "1_blue/c/5.png",
                 "1_blue/empty/.keep.png"):
        (train / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(train / path)
    ds = ImageFolderDataset(train, 8, subclasses=True)
    assert ds.class_names == ["0_red", "0_red/a", "0_red/b", "1_blue/c"] and ds.class_counts() == [1, 2, 1, 1]
    assert ds.class_groups == ["0_red", "0_red", "0_red", "1_blue"]
    assert any("1_blue/empty" in note for note in ds.notes())  # an empty sub-folder is said, not a class
    assert ImageFolderDataset(train, 8).class_names == ["0_red", "1_blue"]  # by default, the groups
    val = tmp_path / "val" / "1_blue" / "c"
    val.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(val / "6.png")
    assert ImageFolderDataset(tmp_path / "val", 8, classes=ds.class_names, subclasses=True).labels == [3]


def test_image_reading_edge_cases(tmp_path):
    from arpg_core.imageio import ImageInputError, open_image

    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    with pytest.raises(ImageInputError, match="the limit is 100 pixels"):  # not "corrupt or truncated"
        open_image(tmp_path / "big.png", max_pixels=100)
    Image.new("RGB", (1024, 768), (10, 200, 30)).save(tmp_path / "photo.jpg")
    assert open_image(tmp_path / "photo.jpg", draft=64).size == (128, 96)  # decoded at 1/8 scale


def test_vq_trainer_refuses_bad_numbers_and_a_finished_run(tmp_path):
    data, out = _make_folder(tmp_path), tmp_path / "run"
    base = f"--data {data} --config VQ-tiny --out {out} --batch-size 4 --threads 1".split()
    with pytest.raises(SystemExit, match="--threads must be at least 1"):
        main(base + "--steps 1 --threads 0".split())
    with pytest.raises(SystemExit, match="--reinit-every must be at least 1"):
        main(base + "--steps 1 --reinit-every 0".split())
    with pytest.raises(SystemExit, match="--edge-weight must be 0 or more"):
        main(base + "--steps 1 --edge-weight -1".split())
    main(base + "--steps 1 --no-flip".split())
    with pytest.raises(SystemExit, match="nothing to train"):
        main(base + ["--steps", "1"])


def test_a_data_set_root_is_not_a_class_folder(tmp_path):
    _make_folder(tmp_path)  # tmp_path/train and tmp_path/val, each with class folders
    with pytest.raises(DataError, match=r"holds the splits train, val, not classes: pass .*train"):
        ImageFolderDataset(tmp_path, 16)
    shutil.rmtree(tmp_path / "val")  # a root holding only its train split: one class of everything, once
    with pytest.raises(DataError, match=r"holds the splits train, not classes"):
        ImageFolderDataset(tmp_path, 16)


def test_symlinked_folders_are_followed_once(tmp_path):
    train = _make_folder(tmp_path)
    shared = tmp_path / "more_red"
    shared.mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(shared / "linked.png")
    (train / "0_red" / "more").symlink_to(shared, target_is_directory=True)
    (shared / "loop").symlink_to(train / "0_red", target_is_directory=True)  # a link back up
    ds = ImageFolderDataset(train, 16)
    assert ds.class_counts() == [5, 4]


def _twemoji_package(root, codepoints, skin=None):
    """A folder laid out as npm unpacks emoji-datasource-twitter: emoji.json, package.json and
    img/twitter/64/<image>.png, each drawing a red 20x10 block in the top-left corner of a transparent
    64x64 image (the drawing must come out centred on white)."""
    images = root / "img" / "twitter" / "64"
    images.mkdir(parents=True)
    table = []
    for cp in codepoints:
        entry = {"unified": cp, "image": f"{cp.lower()}.png", "has_img_twitter": True, "category": "x"}
        if skin and cp == skin[0]:
            entry["skin_variations"] = {"1F3FB": {"unified": skin[1], "image": f"{skin[1].lower()}.png",
                                                  "has_img_twitter": True}}
        table.append(entry)
    table.append({"unified": "1F9FF", "image": "1f9ff.png", "has_img_twitter": False})  # listed, no drawing
    for name in [e["image"] for e in table if e["has_img_twitter"]] + ([f"{skin[1].lower()}.png"] if skin else []):
        drawing = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        drawing.paste((220, 0, 0, 255), (0, 0, 20, 10))
        drawing.save(images / name)
    (root / "emoji.json").write_text(json.dumps(table))
    (root / "package.json").write_text(json.dumps({"name": "emoji-datasource-twitter", "version": "16.0.0"}))
    return root


def test_twemoji_source_reads_the_npm_package_as_folder_or_tgz(tmp_path):
    import tarfile

    from arpg_core.data import emoji

    folder = _twemoji_package(tmp_path / "package", ["1F600", "1F44B"], skin=("1F44B", "1F44B-1F3FB"))
    tgz = tmp_path / "emoji-datasource-twitter-16.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:  # npm packs everything under package/
        tar.add(folder, arcname="package")
    drawings = []
    for source in (emoji.TwemojiSource(folder), emoji.TwemojiSource(tgz)):
        assert source.version == "16.0.0" and sorted(source.images) == ["1F44B", "1F44B-1F3FB", "1F600"]
        assert source.drawing("1f44b-1f3fb", 32) is not None  # skin variations found, any case
        assert source.drawing("1F9FF", 32) is None and source.drawing("2764-FE0F", 32) is None
        pixels = np.asarray(source.drawing("1F600", 32)).astype(int)
        assert pixels.shape == (32, 32, 3)
        assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()  # corners white: moved off the corner
        assert (pixels[15, 16] == [220, 0, 0]).all()  # the block now at the centre, scaled to the width
        drawings.append(pixels)
    assert (drawings[0] == drawings[1]).all()
    with pytest.raises(DataError, match="npm pack emoji-datasource-twitter"):
        emoji.TwemojiSource(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no readable emoji.json.*npm pack"):
        emoji.TwemojiSource(tmp_path / "package" / "img")
    (tmp_path / "junk.tgz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable .tgz"):
        emoji.TwemojiSource(tmp_path / "junk.tgz")
    (folder / "emoji.json").write_text("[]")
    with pytest.raises(DataError, match="lists no Twemoji images"):
        emoji.TwemojiSource(folder)


def _fluent_package(root, codepoints):
    """A folder laid out as npm unpacks @lobehub/fluent-emoji-3d: package.json and
    assets/<lower-case codepoints>.webp, each a blue 30x10 block in the bottom-right corner of a
    transparent 128x128 image."""
    images = root / "assets"
    images.mkdir(parents=True)
    for cp in codepoints:
        drawing = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
        drawing.paste((0, 0, 230, 255), (98, 118, 128, 128))
        drawing.save(images / f"{cp.lower()}.webp", lossless=True)
    (images / "notes.txt").write_text("not an image")
    (root / "package.json").write_text(json.dumps({"name": "@lobehub/fluent-emoji-3d", "version": "1.1.0"}))
    return root


def test_fluent_source_reads_the_npm_package_as_folder_or_tgz(tmp_path):
    import tarfile

    from arpg_core.data import emoji

    folder = _fluent_package(tmp_path / "package", ["1F600", "1F469-200D-1F4BB", "0023-FE0F-20E3"])
    tgz = tmp_path / "lobehub-fluent-emoji-3d-1.1.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="package")
    drawings = []
    for source in (emoji.FluentSource(folder), emoji.FluentSource(tgz)):
        assert source.version == "1.1.0"
        assert sorted(source.images) == ["0023-FE0F-20E3", "1F469-200D-1F4BB", "1F600"]  # notes.txt left out
        assert source.drawing("1f469-200d-1f4bb", 32) is not None  # any case
        assert source.drawing("1F44B", 32) is None
        pixels = np.asarray(source.drawing("1F600", 32)).astype(int)
        assert pixels.shape == (32, 32, 3)
        assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()  # moved off the corner
        assert (np.abs(pixels[16, 16] - [0, 0, 230]) <= 2).all()  # the block now centred, scaled to the width
        drawings.append(pixels)
    assert (drawings[0] == drawings[1]).all()
    (folder / "assets" / "1f600.webp").write_bytes(b"truncated")
    assert emoji.FluentSource(folder).drawing("1F600", 32) is None  # an unreadable image is a missing one
    with pytest.raises(DataError, match="npm pack @lobehub/fluent-emoji-3d"):
        emoji.FluentSource(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no assets/<codepoints>.webp"):
        emoji.FluentSource(folder / "assets")
    (tmp_path / "junk.tgz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable .tgz"):
        emoji.FluentSource(tmp_path / "junk.tgz")


def test_emoji_builder_adds_twemoji_to_training_images_only(tmp_path):
    """With --twemoji, each training emoji gets a second drawing beside its Noto one; held-out emoji
    get none, so the held-out split stays the Noto one; emoji the package lacks are listed."""
    from arpg_core.data import emoji

    if not (emoji.EMOJI_TEST.is_file() and emoji.EMOJI_FONT.is_file()):
        pytest.skip("the Debian emoji packages are not installed")
    lines, train, val = [], [], []
    for line in emoji.EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group: Smileys"):
            lines.append(line)
        elif "; fully-qualified" in line and len(lines) > 0:
            cp = "-".join(line.split(";")[0].split())
            picked, wanted = (train, 3) if emoji.split_of(cp) == "train" else (val, 1)
            if len(picked) < wanted:
                picked.append(cp)
                lines.append(line)
            if len(train) == 3 and len(val) == 1:
                break
    trimmed = tmp_path / "emoji-test.txt"
    trimmed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    package = _twemoji_package(tmp_path / "package", train[:2] + val)  # train[2] missing from the package
    fluent = _fluent_package(tmp_path / "fluent", train[1:] + val)  # train[0] missing from this one
    meta = emoji.build(tmp_path / "out", 32, emoji_test=trimmed, twemoji=package, fluent=fluent)
    twemoji = sorted(p.name for p in (tmp_path / "out").rglob("*.twemoji.png"))
    assert twemoji == sorted(f"{cp}.twemoji.png" for cp in train[:2])
    assert all(p.parents[2].name == "train" for p in (tmp_path / "out").rglob("*.twemoji.png"))
    assert meta["counts"]["train"]["Smileys & Emotion"] == 3 and meta["counts"]["val"]["Smileys & Emotion"] == 1
    assert meta["counts"]["train_twemoji"]["Smileys & Emotion"] == 2 and meta["twemoji_missing"] == [train[2]]
    assert "16.0.0" in meta["sources"]["twemoji"]
    fluent_files = sorted(p.name for p in (tmp_path / "out").rglob("*.fluent.png"))
    assert fluent_files == sorted(f"{cp}.fluent.png" for cp in train[1:])
    assert all(p.parents[2].name == "train" for p in (tmp_path / "out").rglob("*.fluent.png"))
    assert meta["counts"]["train_fluent"]["Smileys & Emotion"] == 2 and meta["fluent_missing"] == [train[0]]
    assert "1.1.0" in meta["sources"]["fluent"] and "MIT" in meta["sources"]["fluent"]
    # --by-style: the same images, each under its style; --subclasses then reads a class per style
    styled = emoji.build(tmp_path / "styled", 32, emoji_test=trimmed, twemoji=package, fluent=fluent, by_style=True)
    assert styled["counts"] == meta["counts"] and styled["layout"] == "group/style/subgroup"
    assert sorted(p.relative_to(tmp_path / "styled").parts[2] for p in (tmp_path / "styled").rglob("*.png")) == \
        ["fluent"] * 2 + ["noto"] * 4 + ["twemoji"] * 2
    train_set = ImageFolderDataset(tmp_path / "styled" / "train", 32, subclasses=True)
    assert train_set.class_names == [f"0_smileys-emotion/{s}" for s in ("fluent", "noto", "twemoji")]
    assert [styled["subclasses"][c] for c in train_set.class_names] == \
        ["Smileys & Emotion / Fluent 3D", "Smileys & Emotion / Noto", "Smileys & Emotion / Twemoji"]
    held_out = ImageFolderDataset(tmp_path / "styled" / "val", 32, classes=train_set.class_names, subclasses=True)
    assert [label for _, label in held_out.samples] == [1]  # the one held-out emoji, Noto only
    assert len(ImageFolderDataset(tmp_path / "styled" / "train", 32).samples) == 7  # by group: all styles
    with pytest.raises(SystemExit, match="npm pack @lobehub"):
        emoji.main(["--out", str(tmp_path / "y"), "--fluent", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="npm pack"):
        emoji.main(["--out", str(tmp_path / "x"), "--twemoji", str(tmp_path / "nowhere")])
