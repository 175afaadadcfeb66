import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import arpg_core
from arpg_core.loading import read_metadata
from arpg_core.training import common, grow
from arpg_core.training import export as export_module
from arpg_core.training.export import export
from arpg_core.training.train_arpg import main
from tests.test_training_vq import StopAfter, _make_folder

ROOT = Path(__file__).resolve().parent.parent
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
    state = common.load_checkpoint(out / common.CHECKPOINT_NAME)
    assert state["step"] == 2
    exported = arpg_core.load_model(out / "arpg.safetensors")
    assert exported.class_names == ["0_red", "1_blue"] and not (out / "samples").exists()  # no sheet on a stop
    meta = read_metadata(out / "arpg.safetensors")
    assert meta["step"] == "2" and meta["weights"] == "ema"  # no evaluation yet: the EMA weights
    for name, value in exported.state_dict().items():  # the weights of step 2 (bf16 on disk), not a start's
        assert torch.allclose(value, state["ema"]["shadow"][name].to(torch.bfloat16).float()), name
    # a resume restores the weights, not only the step: stopped before its first step, it saves them unchanged
    monkeypatch.setattr(common, "StopFlag", lambda: StopAfter(0))
    main(args + "--steps 50 --eval-every 20 --sample-every 20 --threads 1".split())
    again = common.load_checkpoint(out / common.CHECKPOINT_NAME)
    assert again["step"] == 2
    assert all(torch.equal(again["model"][k], v) for k, v in state["model"].items())
    assert all(torch.equal(again["ema"]["shadow"][k], v) for k, v in state["ema"]["shadow"].items())


def test_a_real_interrupt_saves_and_exports(tmp_path):
    """Ctrl-C (SIGINT) in a separate process, the real signal handler: the run ends cleanly, with a
    checkpoint and exported weights of the same step."""
    _, out, args = _tiny_run(tmp_path)
    cmd = [sys.executable, "-m", "arpg_core.training.train_arpg", *args, "--steps", "100000", "--threads", "1",
           "--eval-every", "100000", "--sample-every", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # the banner comes once the codes are encoded and training starts
            if "start step 0" in line:
                assert "| batch 4 |" in line  # the batch is in the banner: the default (64) is easy to miss
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped at step" in rest
    step = common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"]
    assert 0 < step < 100000 and read_metadata(out / "arpg.safetensors")["step"] == str(step)


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
    assert read_metadata(tmp_path / "assets" / "arpg_emoji.safetensors")["storage"] == "int8-rows"
    bf16 = export(str(vq_path), str(out / "arpg.safetensors"), tmp_path / "bf16", per_class=1, storage="bf16")
    assert "storage" not in read_metadata(tmp_path / "bf16" / "arpg_emoji.safetensors")
    assert bf16["arpg_emoji.safetensors"] > 1.5 * sizes["arpg_emoji.safetensors"]


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


def test_cache_follows_the_data_and_resume_checks_the_codes(tmp_path):
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
    tuned = arpg_core.load_tokenizer(vq_path)  # a decoder-only fine-tune: other bytes, the same codes
    with torch.no_grad():
        next(tuned.decoder.parameters()).add_(0.1)
    tuned_path = arpg_core.save_checkpoint(tuned, tmp_path / "tuned.safetensors")
    main([str(tuned_path) if a == str(vq_path) else a for a in args] + "--steps 3 --threads 1".split())
    assert common.load_checkpoint(out / common.CHECKPOINT_NAME)["step"] == 3
    (tmp_path / "train" / "2_green").mkdir()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(tmp_path / "train" / "2_green" / "0.png")
    with pytest.raises(SystemExit, match=r"other classes \(added: 2_green\)"):
        main(args + "--steps 4 --threads 1".split())


def test_init_starts_a_new_run_from_exported_weights(tmp_path, capsys):
    """--init continues from a shipped model instead of a random start, and refuses weights whose
    tokens or classes would mean something else."""
    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 2 --threads 1".split())
    init = arpg_core.load_model(out / "arpg.safetensors")
    base = [a for a in args if a not in ("--out", str(out))]  # same data and tokenizer, another --out each time
    cont = tmp_path / "cont"
    main(base + f"--out {cont} --init {out / 'arpg.safetensors'} --steps 1 --lr 1e-9 --warmup 1 --threads 1".split())
    started = common.load_checkpoint(cont / common.CHECKPOINT_NAME)["model"]
    for k, v in init.state_dict().items():
        assert torch.allclose(started[k], v.float(), atol=1e-6), k
    fresh = tmp_path / "fresh"
    main(base + f"--out {fresh} --steps 1 --lr 1e-9 --warmup 1 --threads 1".split())
    random_start = common.load_checkpoint(fresh / common.CHECKPOINT_NAME)["model"]
    assert not all(torch.allclose(random_start[k], v) for k, v in started.items() if v.is_floating_point())
    capsys.readouterr()
    main(base + f"--out {cont} --init {out / 'arpg.safetensors'} --steps 2 --threads 1".split())  # resume
    assert f"--init {out / 'arpg.safetensors'} is not applied" in capsys.readouterr().out
    assert common.load_checkpoint(cont / common.CHECKPOINT_NAME)["step"] == 2

    torch.manual_seed(7)
    other = arpg_core.save_checkpoint(arpg_core.build_tokenizer("VQ-tiny"), tmp_path / "other.safetensors")
    swapped = [str(other) if a == str(vq_path) else a for a in base]
    with pytest.raises(SystemExit, match="codes of another tokenizer"):
        main(swapped + f"--out {tmp_path / 'x'} --init {out / 'arpg.safetensors'} --steps 1 --threads 1".split())
    (tmp_path / "train" / "2_green").mkdir()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(tmp_path / "train" / "2_green" / "0.png")
    with pytest.raises(SystemExit, match="takes exported weights"):  # a training checkpoint, not an export
        main(base + f"--out {tmp_path / 'z'} --init {cont / common.CHECKPOINT_NAME} --steps 1 --threads 1".split())
    with pytest.raises(SystemExit, match="has 2 classes, the data 3"):
        main(base + f"--out {tmp_path / 'y'} --init {out / 'arpg.safetensors'} --steps 1 --threads 1".split())
    assert not list((tmp_path / "y").glob("codes_*"))  # refused before the images were encoded


def test_a_resumed_run_exports_what_its_last_evaluation_chose(tmp_path, monkeypatch):
    _, out, args = _tiny_run(tmp_path)
    main(args + "--steps 2 --eval-every 2 --threads 1".split())
    evals = out / "eval.jsonl"
    record = json.loads(evals.read_text().splitlines()[-1])
    record["val_loss_ema"] = record["val_loss"] + 1.0  # as if the raw weights had won at step 2
    evals.write_text(evals.read_text() + json.dumps(record) + "\n" + '{"step": 2, "val_lo')  # and a torn line
    monkeypatch.setattr(common, "StopFlag", lambda: StopAfter(1))
    main(args + "--steps 50 --eval-every 20 --threads 1".split())  # stopped at step 3, before any evaluation
    meta = arpg_core.loading.read_metadata(out / "arpg.safetensors")
    assert (meta["step"], meta["weights"]) == ("3", "raw")
    monkeypatch.undo()
    main(args + "--steps 1 --threads 1 --fresh".split())  # a new run in the same folder: the old log kept aside
    assert len(evals.read_text().splitlines()) == 1 and (out / "eval.previous.jsonl").exists()


def test_augment_encodes_shrunk_and_shifted_copies(tmp_path):
    from arpg_core.training.train_arpg import shrink_and_shift

    x = -torch.ones(2, 3, 32, 32)  # black canvases with a red band from the left edge to the right
    x[:, 0, 8:24, :] = 1
    a = shrink_and_shift(x, torch.Generator().manual_seed(3))
    b = shrink_and_shift(x, torch.Generator().manual_seed(3))
    c = shrink_and_shift(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    band = a[:, 0] > 0  # [2, 32, 32]
    width = band.any(dim=1).sum(1)  # columns the band reaches: the whole shrunk width, nothing cut off
    height = band.any(dim=2).sum(1)
    assert (width >= 24).all() and ((width - 2 * height).abs() <= 2).all()  # a crop would keep the height
    assert (a[:, :, 0, 0] == -1).all() and (a[:, :, -1, -1] == -1).all()  # filled with the black border

    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 1 --threads 1 --augment 2".split())
    cache = next(out.glob("codes_train_*_flip_aug2v1.pt"))
    saved = torch.load(cache, weights_only=True)
    assert len(saved["codes"]) == 8 * 3 * 2  # originals and 2 copies, each mirrored
    assert saved["labels"].tolist() == ([0] * 4 + [1] * 4) * 6
    assert not torch.equal(saved["codes"][8:16], saved["codes"][:8])  # the copies are not the originals
    main(args + "--steps 2 --threads 1".split())  # without --augment: its own cache, 16 codes
    assert len(torch.load(next(out.glob("codes_train_*_flip.pt")), weights_only=True)["codes"]) == 16
    with pytest.raises(SystemExit, match="--augment must be 0 to 16"):
        main(args + "--steps 3 --augment 17".split())


def test_a_refused_export_leaves_the_assets_alone(tmp_path, monkeypatch):
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
    main(args + "--steps 1 --threads 1".split())  # a pair that exports, refused only for its size
    trained = str(out / "arpg.safetensors")
    with monkeypatch.context() as m:
        m.setattr(export_module, "MAX_FILE_BYTES", 1000)
        with pytest.raises(arpg_core.CheckpointError, match="files over 0.001 MB: .*is unchanged"):
            export(str(vq_path), trained, assets, per_class=1)
    with monkeypatch.context() as m:
        m.setattr(export_module, "MAX_TOTAL_BYTES", 1000)
        with pytest.raises(arpg_core.CheckpointError, match="the files add up to .* MB, over 0.001 MB"):
            export(str(vq_path), trained, assets, per_class=1)
    assert (assets / "arpg_emoji.safetensors").read_bytes() == b"shipped" and len(list(assets.iterdir())) == 1


def test_resume_takes_decays_from_the_command_line(tmp_path):
    _, out, args = _tiny_run(tmp_path)
    main(args + "--steps 1 --threads 1 --ema-decay 0.9 --weight-decay 0.05".split())
    main(args + "--steps 2 --threads 1 --ema-decay 0.5 --weight-decay 0.2".split())
    state = common.load_checkpoint(out / common.CHECKPOINT_NAME)
    assert state["ema"]["decay"] == 0.5
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.2, 0.0]


def test_user_mistakes_get_one_line_errors(tmp_path):
    _, out, args = _tiny_run(tmp_path)
    with pytest.raises(SystemExit, match="--eval-every must be at least 1"):
        main(args + "--steps 2 --eval-every 0".split())
    with pytest.raises(SystemExit, match="--lr must be a positive number"):
        main(args + "--steps 2 --lr nan".split())
    with pytest.raises(SystemExit, match="--val-data .* is not a folder"):
        main(args + f"--steps 2 --threads 1 --val-data {tmp_path / 'vall'}".split())
    with pytest.raises(SystemExit, match="--no-val and --val-data contradict"):
        main(args + f"--steps 2 --threads 1 --no-val --val-data {tmp_path / 'val'}".split())
    no_val = tmp_path / "no-val"  # the val sibling is there, and left alone
    main([a if a != str(out) else str(no_val) for a in args] + "--steps 1 --threads 1 --no-val".split())
    assert (no_val / "arpg.safetensors").is_file() and not list(no_val.glob("codes_val_*"))
    # numbers that trained a silently wrong model (no null class for CFG, or no labels at all) or
    # failed in torch.multinomial after the folder was encoded
    for flag in ("--class-dropout 1", "--class-dropout nan", "--balance-alpha nan", "--balance-alpha 50"):
        with pytest.raises(SystemExit, match=f"{flag.split()[0]} must be in"):
            main(args + f"--steps 2 --threads 1 {flag}".split())
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match="is a file; it names the run's folder"):
        main([a if a != str(out) else str(tmp_path / "a_file") for a in args] + "--steps 2 --threads 1".split())
    main(args + "--steps 2 --threads 1".split())
    with pytest.raises(SystemExit, match="at step 2, and --steps is 2: nothing to train"):
        main(args + "--steps 2 --threads 1".split())


def test_no_flip_a_broken_cache_and_the_exported_weights(tmp_path):
    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 2 --threads 1 --no-flip --eval-every 1 --sample-every 2".split())
    cache = next(out.glob("codes_train_*.pt"))
    assert not cache.name.endswith("_flip.pt") and len(torch.load(cache, weights_only=True)["codes"]) == 8
    meta = arpg_core.loading.read_metadata(out / "arpg.safetensors")
    tokenizer = arpg_core.load_tokenizer(vq_path)
    assert meta["tokenizer_codes"] == tokenizer.codes_digest() and meta["weights"] in ("ema", "raw")
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    better = "ema" if evals[-1]["val_loss_ema"] <= evals[-1]["val_loss"] else "raw"
    assert meta["weights"] == better
    cache.write_bytes(cache.read_bytes()[:100])  # a cache cut short
    main(args + "--steps 3 --threads 1 --no-flip --fresh".split())  # re-encodes instead of a traceback
    assert len(torch.load(cache, weights_only=True)["codes"]) == 8
    # a tokenizer whose encoder differs makes other codes: export refuses the pair
    torch.manual_seed(5)
    other = arpg_core.save_checkpoint(arpg_core.build_tokenizer("VQ-tiny"), tmp_path / "other.safetensors")
    with pytest.raises(arpg_core.ARPGError, match="codes of another tokenizer"):
        export(str(other), str(out / "arpg.safetensors"), tmp_path / "assets", per_class=1)
    tuned = arpg_core.load_tokenizer(vq_path)  # a decoder-only fine-tune keeps the codes: accepted
    with torch.no_grad():
        tuned.post_quant_conv.weight.mul_(1.1)
    tuned_path = arpg_core.save_checkpoint(tuned, tmp_path / "tuned.safetensors")
    assert export(str(tuned_path), str(out / "arpg.safetensors"), tmp_path / "assets", per_class=1)
    shipped = arpg_core.loading.read_metadata(tmp_path / "assets" / "arpg_emoji.safetensors")
    assert shipped["tokenizer_codes"] == tokenizer.codes_digest()  # the record travels into assets/


def test_readable_class_names_follow_the_folders(tmp_path, capsys):
    from arpg_core.data.folder import ImageFolderDataset
    from arpg_core.training.train_arpg import class_names_of

    data = _make_folder(tmp_path)
    ds = ImageFolderDataset(data, 16)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"classes": ["Blue", "Red"], "folders": ["1_blue", "0_red"]}))
    assert class_names_of(data, ds) == ["Red", "Blue"]  # paired by folder, not by position
    meta.write_text(json.dumps({"classes": ["Red", "Blue"]}))  # no folders: names cannot be paired
    assert class_names_of(data, ds) == ["0_red", "1_blue"]
    meta.write_text("{broken")
    assert class_names_of(data, ds) == ["0_red", "1_blue"] and "not used for class names" in capsys.readouterr().out


def test_ema_warms_up():
    ema = common.EMA(torch.nn.Linear(2, 2), decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999 and ema.decay_at(None) == 0.999


def test_resume_restores_weights_and_optimizer():
    """What both trainers resume through: the weights, the EMA and the optimizer's moments come back,
    not only the step count."""
    torch.manual_seed(0)
    model = arpg_core.build_model(TINY)
    ema, opt = common.EMA(model, 0.9), common.make_optimizer(model, 1e-3)
    tokens, labels = torch.randint(0, 64, (2, 256)), torch.tensor([0, 1])
    from arpg_core.training.objective import arpg_loss

    arpg_loss(model, tokens, labels, class_dropout=0.0).backward()
    opt.step()
    ema.update(model, 0)
    state = common.training_state(model, ema, opt, 1, model.config.to_dict())
    torch.manual_seed(1)
    fresh = arpg_core.build_model(TINY)
    fresh_ema, fresh_opt = common.EMA(fresh, 0.9), common.make_optimizer(fresh, 1e-3)
    assert common.restore_training_state(state, fresh, fresh_ema, fresh_opt) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
        assert torch.equal(fresh_ema.shadow[k], ema.shadow[k]), k
    moments = [s["exp_avg"] for s in fresh_opt.state_dict()["state"].values()]
    assert moments and any(m.abs().sum() > 0 for m in moments)


def test_eval_arpg_reports_loss_per_class_beside_a_unigram(tmp_path, capsys):
    import math

    from arpg_core.training import eval_arpg

    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 1 --threads 1".split())
    data = tmp_path / "train"
    result = eval_arpg.main(f"--model {out / 'arpg.safetensors'} --tokenizer {vq_path} --data {tmp_path / 'val'} "
                            f"--train {data} --orders 2".split())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    # one step from a zero-initialised head: close to uniform over the 64 codes
    assert abs(result["loss_nats"] - math.log(64)) < 0.1 and 0 < result["unigram_nats"] < math.log(64) + 0.1
    assert list(result["loss_nats_per_class"]) == ["0_red", "1_blue"] and result["images"] == 2
    (data / "2_green").mkdir()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(data / "2_green" / "0.png")
    with pytest.raises(SystemExit, match="has 3 classes; the model was trained on 2"):
        eval_arpg.main(f"--model {out / 'arpg.safetensors'} --tokenizer {vq_path} --data {data}".split())


def test_grow_deepens_a_trained_model_without_changing_its_logits(tmp_path, capsys):
    """grow adds blocks to each half whose output projections are zero: same logits, the tokenizer
    record and class names kept, and train_arpg --init trains on from the grown file."""
    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 2 --threads 1".split())
    small = arpg_core.load_model(out / "arpg.safetensors")
    grown_path = tmp_path / "grown.safetensors"
    grow.main(f"--model {out / 'arpg.safetensors'} --layers 6 --out {grown_path}".split())
    assert "2 -> 6 layers" in capsys.readouterr().out
    grown = arpg_core.load_model(grown_path)
    assert grown.config.n_layer == 6 and len(grown.layers.self_dec) == len(grown.layers.cross_dec) == 3
    assert grown.class_names == small.class_names == ["0_red", "1_blue"]
    meta = arpg_core.loading.read_metadata(grown_path)
    assert meta["tokenizer_codes"] == arpg_core.loading.read_metadata(out / "arpg.safetensors")["tokenizer_codes"]
    torch.manual_seed(0)
    tokens, order = torch.randint(0, 64, (3, 256)), torch.stack([torch.randperm(256) for _ in range(3)])
    labels = torch.tensor([0, 1, -1])  # -1: the null class of guidance
    with torch.no_grad():
        assert torch.allclose(grown(tokens, labels, order), small(tokens, labels, order), atol=1e-5)
    new_block = grown.layers.cross_dec[2]
    assert 0.015 < new_block.ffn.w1.weight.std() < 0.025  # the rest drawn as a fresh run's (std 0.02)

    base = [a for a in args if a not in ("--out", str(out))]
    cont = tmp_path / "cont"
    main(base + f"--out {cont} --init {grown_path} --steps 2 --lr 1e-2 --warmup 1 --threads 1".split())
    trained = common.load_checkpoint(cont / common.CHECKPOINT_NAME)["model"]
    assert trained["layers.cross_dec.2.ffn.w2.weight"].abs().sum() > 0  # the new blocks learn

    for model, layers, message in ((out / "arpg.safetensors", 0, "fewer than the model's 2"),
                                   (out / "arpg.safetensors", 5, "must be even"),
                                   (tmp_path / "missing.safetensors", 4, "checkpoint not found")):
        with pytest.raises(SystemExit, match=message):
            grow.main(f"--model {model} --layers {layers} --out {tmp_path / 'x.safetensors'}".split())
    assert not (tmp_path / "x.safetensors").exists()
    (tmp_path / "taken").mkdir()  # --out names a folder: a one-line error, not a stack trace
    with pytest.raises(SystemExit, match="cannot write"):
        grow.main(f"--model {out / 'arpg.safetensors'} --layers 4 --out {tmp_path / 'taken'}".split())
    assert not (tmp_path / "taken.tmp").exists()  # the weights it could not place are not left behind


def test_subclasses_train_on_from_a_model_of_their_groups(tmp_path, capsys):
    """--subclasses: each sub-folder is a class, grouped under its class folder. --init from a model of
    the groups starts each subclass as its group (same logits), the export records the groups, the
    sample sheet has a row per group, eval_arpg adds the loss told only the group, and a pipeline
    asking for a group draws one of its subclasses by the seed."""
    from arpg_core.pipeline import Pipeline
    from arpg_core.training import eval_arpg

    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 2 --threads 1".split())
    groups_model = arpg_core.load_model(out / "arpg.safetensors")
    for split in ("train", "val"):  # red split in two sub-folders, blue in one
        red = sorted((tmp_path / split / "0_red").glob("*.png"))
        for i, f in enumerate(red):
            (f.parent / ("dark" if i % 2 else "light")).mkdir(exist_ok=True)
            f.rename(f.parent / ("dark" if i % 2 else "light") / f.name)
        for f in sorted((tmp_path / split / "1_blue").glob("*.png")):
            (f.parent / "sky").mkdir(exist_ok=True)
            f.rename(f.parent / "sky" / f.name)
    base = [a for a in args if a not in ("--out", str(out))]
    sub = tmp_path / "sub"
    main(base + f"--out {sub} --init {out / 'arpg.safetensors'} --subclasses --steps 1 --lr 1e-9 --warmup 1 "
                "--threads 1 --sample-every 1".split())
    assert "its 2 classes split into the data's 3 subclasses" in capsys.readouterr().out
    model = arpg_core.load_model(sub / "arpg.safetensors")
    assert model.config.num_classes == 3 and model.class_names == ["0_red/dark", "0_red/light", "1_blue/sky"]
    assert model.class_groups == ["0_red", "0_red", "1_blue"]
    torch.manual_seed(0)
    tokens, order = torch.randint(0, 64, (4, 256)), torch.stack([torch.randperm(256) for _ in range(4)])
    with torch.no_grad():  # subclass k starts as its group (lr 1e-9: one step moves nothing visible)
        split = model(tokens, torch.tensor([0, 1, 2, -1]), order)
        grouped = groups_model(tokens, torch.tensor([0, 0, 1, -1]), order)
    assert torch.allclose(split, grouped, atol=1e-3)
    sheet = Image.open(sub / "samples" / "step_000001.png")
    assert sheet.height == 2 * 32  # a row per group, not per subclass

    result = eval_arpg.main(f"--model {sub / 'arpg.safetensors'} --tokenizer {vq_path} --data {tmp_path / 'val'} "
                            f"--train {tmp_path / 'train'} --orders 2".split())
    assert list(result["loss_nats_per_class"]) == ["0_red", "1_blue"] and result["loss_conditions_on"] == "subclass"
    # just split, a group's subclasses predict alike: told only the group, the loss is the same
    assert abs(result["loss_nats_given_group"] - result["loss_nats"]) < 0.01

    assets = tmp_path / "assets"
    export(str(vq_path), str(sub / "arpg.safetensors"), assets, per_class=2)
    shipped = arpg_core.load_model(assets / "arpg_emoji.safetensors")
    assert shipped.class_groups == model.class_groups
    pipe = Pipeline(shipped, arpg_core.load_tokenizer(assets / "vq_emoji.safetensors"))
    assert pipe.group_names == ["0_red", "1_blue"] and shipped.class_counts == [2, 2, 4]  # training images
    assert {pipe.group_label(0, seed) for seed in range(20)} == {0, 1} and pipe.group_label(1, 5) == 2
    with pytest.raises(arpg_core.errors.SamplingError, match="group 2 does not exist"):
        pipe.group_label(2, 0)
    with pytest.raises(SystemExit, match="not the groups"):  # --init whose classes are not the groups
        (tmp_path / "train" / "1_blue" / "sky").rename(tmp_path / "train" / "1_blue" / "night")
        (tmp_path / "train" / "0_red").rename(tmp_path / "train" / "0_rose")
        main(base + f"--out {tmp_path / 'x'} --init {out / 'arpg.safetensors'} --subclasses --steps 1 "
                    "--threads 1".split())


def test_group_marginal_is_the_mixture_of_the_subclasses(monkeypatch):
    """-log sum_s p(s | g) p(x | s), per token: checked against the sum written out, for an image of
    a group with two subclasses (training shares 3:1) and one of a group with one."""
    import math

    from arpg_core.training import eval_arpg

    nats = {(0, 0): 100.0, (0, 1): 90.0, (1, 2): 50.0}  # (image, subclass) -> summed nats of the image

    def fake(model, tokens, labels, orders):
        images = tokens[:, 0].tolist()  # the test's codes carry the image index in their first token
        return torch.tensor([nats[(i, s)] for i, s in zip(images, labels.tolist(), strict=True)])

    monkeypatch.setattr(eval_arpg, "image_nats", fake)
    codes = torch.tensor([[0] * 4, [1] * 4])
    result = eval_arpg.group_marginal_nats(None, codes, torch.tensor([0, 2]), torch.tensor([0, 0, 1]),
                                           prior=torch.tensor([3.0, 1.0, 5.0]), orders=2)
    expected = -math.log(0.75 * math.exp(-100) + 0.25 * math.exp(-90)) / 4
    assert result.tolist() == pytest.approx([expected, 50 / 4])


def test_a_group_draws_its_classes_with_the_odds_of_their_training_images():
    from arpg_core.classes import group_label

    groups = ["a", "b", "b", "b"]
    picks = [group_label(groups, 1, seed, class_counts=[5, 30, 10, 0]) for seed in range(2000)]
    assert picks.count(3) == 0 and 0.70 < picks.count(1) / len(picks) < 0.80  # 30 of 40 images
    assert picks == [group_label(groups, 1, seed, class_counts=[5, 30, 10, 0]) for seed in range(2000)]
    even = [group_label(groups, 1, seed) for seed in range(600)]  # no counts: equal odds
    assert all(150 < even.count(k) < 250 for k in (1, 2, 3))
    assert {group_label(groups, 0, seed) for seed in range(5)} == {0}
