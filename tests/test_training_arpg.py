import json

import pytest
import torch
from PIL import Image

import arpg_core
from arpg_core.training import common
from arpg_core.training.export import export
from arpg_core.training.train_arpg import main
from tests.test_training_vq import StopAfter, _make_folder

TINY = dict(dim=64, n_layer=2, n_head=1, vocab_size=64, num_classes=2, grid_size=16, multiple_of=32)


def _tiny_run(tmp_path):
    data = _make_folder(tmp_path)
    torch.manual_seed(0)
    vq_path = arpg_core.save_checkpoint(arpg_core.build_tokenizer("VQ-tiny"), tmp_path / "vq.safetensors")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    args = f"--data {data} --tokenizer {vq_path} --config {config} --out {out} --batch-size 4".split()
    return vq_path, out, args


def test_stopped_run_exports_the_weights_it_reached(tmp_path, monkeypatch):
    _, out, args = _tiny_run(tmp_path)
    monkeypatch.setattr(common, "StopFlag", lambda: StopAfter(2))
    main(args + "--steps 50 --eval-every 20 --sample-every 20 --threads 1".split())
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 2
    exported = arpg_core.load_model(out / "arpg.safetensors")
    assert exported.class_names == ["0_red", "1_blue"] and not (out / "samples").exists()  # no sheet on a stop


def test_train_resume_export(tmp_path):
    vq_path, out, args = _tiny_run(tmp_path)
    args += "--eval-every 3 --sample-every 5 --save-every 100 --warmup 1 --threads 1".split()
    main(args + ["--steps", "3"])
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 3
    main(args + ["--steps", "5"])
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 5
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 5]
    assert all(e["val_loss"] > 0 and e["unigram_loss"] > 0 for e in evals)
    assert (out / "samples" / "step_000005.png").exists()
    model = arpg_core.load_model(out / "arpg.safetensors")
    assert model.class_names == ["0_red", "1_blue"] and model.config.vocab_size == 64
    # 8 images (4 per class) plus their flipped copies were tokenised once and cached
    assert len(list(out.glob("codes_train_*_flip.pt"))) == 1

    sizes = export(str(vq_path), str(out / "arpg.safetensors"), tmp_path / "assets", per_class=2)
    assert set(sizes) == {"vq_emoji.safetensors", "arpg_emoji.safetensors"}
    assert arpg_core.load_model(tmp_path / "assets" / "arpg_emoji.safetensors").class_names == ["0_red", "1_blue"]
    assert (tmp_path / "assets" / "samples_emoji.png").exists()


def test_any_class_count_trains_with_a_preset(tmp_path):
    """The preset gives the shape; vocabulary, classes and grid come from the tokenizer and the data,
    so a flat folder (one class) or three classes train without a hand-written config."""
    vq_path, out, args = _tiny_run(tmp_path)
    data = tmp_path / "train"
    main(args + f"--steps 1 --threads 1 --out {tmp_path / 'flat'} --data {data / '0_red'}".split())
    assert arpg_core.load_model(tmp_path / "flat" / "arpg.safetensors").config.num_classes == 1
    (data / "2_green").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (0, 200, 0)).save(data / "2_green" / f"{i}.png")
    main(args + "--steps 1 --threads 1".split())
    model = arpg_core.load_model(out / "arpg.safetensors")
    assert model.config.num_classes == 3 and model.class_names == ["0_red", "1_blue", "2_green"]


def test_cache_follows_the_data_and_resume_checks_the_tokenizer(tmp_path):
    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 1 --threads 1".split())
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "train" / "1_blue" / "new.png")
    main(args + "--steps 2 --threads 1".split())  # re-encodes: 9 images and their mirrors, not the old 8
    caches = sorted(out.glob("codes_train_*_flip.pt"), key=lambda p: p.stat().st_mtime)
    assert len(caches) == 2 and len(torch.load(caches[-1], weights_only=True)["codes"]) == 18
    torch.manual_seed(1)
    other = arpg_core.save_checkpoint(arpg_core.build_tokenizer("VQ-tiny"), tmp_path / "other.safetensors")
    swapped = [str(other) if a == str(vq_path) else a for a in args]
    with pytest.raises(SystemExit, match="codes of another tokenizer"):
        main(swapped + "--steps 3 --threads 1".split())
    (tmp_path / "train" / "2_green").mkdir()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(tmp_path / "train" / "2_green" / "0.png")
    with pytest.raises(SystemExit, match=r"other classes \(added: 2_green\)"):
        main(args + "--steps 3 --threads 1".split())


def test_a_refused_export_leaves_the_assets_alone(tmp_path):
    vq_path, out, args = _tiny_run(tmp_path)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "arpg_emoji.safetensors").write_bytes(b"shipped")
    wrong = arpg_core.build_model({**TINY, "vocab_size": 32})  # does not match the tokenizer's 64 codes
    wrong.class_names = ["0_red", "1_blue"]
    path = arpg_core.save_checkpoint(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(arpg_core.ARPGError, match="vocab"):
        export(str(vq_path), str(path), assets)
    assert (assets / "arpg_emoji.safetensors").read_bytes() == b"shipped" and len(list(assets.iterdir())) == 1


def test_resume_takes_decays_from_the_command_line(tmp_path):
    _, out, args = _tiny_run(tmp_path)
    main(args + "--steps 1 --threads 1 --ema-decay 0.9 --weight-decay 0.05".split())
    main(args + "--steps 2 --threads 1 --ema-decay 0.5 --weight-decay 0.2".split())
    state = common.load_checkpoint(out / common.CHECKPOINT_NAME)
    assert state["ema"]["decay"] == 0.5
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.2, 0.0]
