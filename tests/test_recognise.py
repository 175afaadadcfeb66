"""The recognition measure (arpg_core.training.recognise, `eval_arpg --recognise`): a classifier that
tells classes apart, shares per class, and a cache that is reused only for the same images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import arpg_core
from arpg_core.errors import ConfigError
from arpg_core.training import eval_arpg, recognise
from arpg_core.training.train_arpg import main
from tests.test_training_arpg import _tiny_run


def _squares(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Red squares (class 0) and blue ones (class 1) of random shade, size and place, on white."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = torch.ones(2 * count, 3, 32, 32), torch.arange(2).repeat_interleave(count)
    for i, label in enumerate(labels.tolist()):
        side = int(torch.randint(8, 20, (), generator=gen))
        top, left = (int(v) for v in torch.randint(0, 32 - side, (2,), generator=gen))
        colour = torch.full((3,), -1.0)
        colour[2 * label] = torch.rand((), generator=gen).item() * 0.8 + 0.2
        images[i, :, top:top + side, left:left + side] = colour[:, None, None]
    return images, labels


def test_the_classifier_tells_classes_apart_and_shares_are_per_class():
    images, labels = _squares(16, seed=0)
    classifier = recognise.train_classifier(images, labels, num_classes=2, steps=60, batch_size=16)
    fresh, truth = _squares(8, seed=1)
    predicted = recognise.predict(classifier, fresh)
    assert (predicted == truth).all()
    names = ["red", "blue"]
    shares = recognise.recognised(predicted, truth, names)
    assert shares == {"red": {"share": 1.0, "images": 8}, "blue": {"share": 1.0, "images": 8},
                      "all": {"share": 1.0, "images": 16}}
    mixed = recognise.recognised(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), names)
    assert mixed["red"] == {"share": 0.5, "images": 2, "else_mostly": "blue"} and mixed["all"]["share"] == 0.75


def _bars(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upright bars (class 0) and lying ones (class 1), each of a random dark colour, size and place."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = torch.ones(2 * count, 3, 32, 32), torch.arange(2).repeat_interleave(count)
    for i, label in enumerate(labels.tolist()):
        long, short = int(torch.randint(16, 26, (), generator=gen)), int(torch.randint(4, 8, (), generator=gen))
        h, w = (long, short) if label == 0 else (short, long)
        top, left = int(torch.randint(0, 32 - h, (), generator=gen)), int(torch.randint(0, 32 - w, (), generator=gen))
        images[i, :, top:top + h, left:left + w] = torch.rand(3, 1, 1, generator=gen) - 0.8  # [-0.8, 0.2]
    return images, labels


def test_the_grey_judge_is_colour_blind_but_sees_shapes():
    images, labels = _bars(24, seed=0)
    with recognise.one_thread():  # the weights, so the 16 predictions below, do not depend on --threads
        grey = recognise.train_classifier(images, labels, num_classes=2, steps=80, batch_size=16, view="grey")
    fresh, truth = _bars(8, seed=1)
    assert (recognise.predict(grey, fresh) == truth).float().mean() >= 0.9  # outline, whatever the colour
    # tinted without changing the luma: another image to the eye, the same image to the grey judge
    tint = torch.tensor([0.2, -0.2 * 0.299 / 0.587, 0.0])[:, None, None]  # the bars stay within [-1, 1]
    tinted = fresh + tint * (fresh < 0.9).all(1, keepdim=True)
    assert not torch.allclose(tinted, fresh) and tinted.abs().max() <= 1
    assert torch.allclose(recognise.greyscale(tinted), recognise.greyscale(fresh), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(grey(tinted), grey(fresh), atol=1e-4)
    assert recognise.greyscale(torch.ones(1, 3, 4, 4)).eq(1).all()  # white stays white
    with pytest.raises(ConfigError, match="view must be one of"):
        recognise.Classifier(2, view="sepia")


def test_eval_arpg_recognise_reports_samples_beside_heldout(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(recognise, "STEPS", 5)
    vq_path, out, args = _tiny_run(tmp_path)
    main(args + "--steps 1 --threads 1".split())
    capsys.readouterr()
    cached = tmp_path / "classifier.pt"
    argv = (f"--model {out / 'arpg.safetensors'} --tokenizer {vq_path} --data {tmp_path / 'val'} "
            f"--train {tmp_path / 'train'} --orders 1 --recognise 3 --classifier {cached}").split()
    result = eval_arpg.main(argv)
    captured = capsys.readouterr()
    assert json.loads(captured.out) == result  # stdout holds the JSON alone; progress goes to stderr
    assert "training the recognition classifier on 8 reconstructed images" in captured.err
    found = result["recognised"]
    assert [(k, v["images"]) for k, v in found["heldout"].items()] == [("0_red", 1), ("1_blue", 1), ("all", 2)]
    assert [(k, v["images"]) for k, v in found["samples"].items()] == [("0_red", 3), ("1_blue", 3), ("all", 6)]
    assert all(0 <= v["share"] <= 1 for part in ("heldout", "samples") for v in found[part].values())
    assert "training the grey recognition classifier on 8 reconstructed images" in captured.err
    assert [(k, v["images"]) for k, v in found["grey"]["samples"].items()] == [("0_red", 3), ("1_blue", 3), ("all", 6)]
    assert found["grey"]["heldout"]["all"]["images"] == 2
    assert cached.is_file() and (tmp_path / "classifier-grey.pt").is_file()

    trained = []

    def untrained(images, labels, num_classes, steps, view="colour", **_):
        trained.append(view)  # a cache miss: an untrained classifier keeps the test quick
        return recognise.Classifier(num_classes, view=view).eval()

    monkeypatch.setattr(recognise, "train_classifier", untrained)
    again = eval_arpg.main(argv)
    assert trained == []  # both judges came from their caches
    assert again["recognised"]["heldout"] == found["heldout"]  # same classifier, same held-out images
    assert again["recognised"]["grey"] == found["grey"]  # the grey one too (same seeds: same samples)
    # new training images: neither cache fits any more, and both judges are trained again
    (tmp_path / "train" / "0_red" / "0.png").write_bytes((tmp_path / "train" / "1_blue" / "0.png").read_bytes())
    eval_arpg.main(argv)
    assert trained == ["colour", "grey"]
    assert "trained on other images or another tokenizer" in capsys.readouterr().err
    # a file that is not a classifier cache (the shipped model, a run's last.pt, a folder, a damaged
    # file) is refused before minutes of training would end by overwriting it
    for other in (Path(__file__).resolve().parent.parent / "assets" / "arpg_emoji.safetensors", tmp_path / "train"):
        with pytest.raises(SystemExit, match="is not a recognition-classifier cache"):
            eval_arpg.main(argv[:-1] + [str(other)])
    torch.save({"step": 3, "model": {}}, tmp_path / "last.pt")
    with pytest.raises(SystemExit, match="is not a recognition-classifier cache"):
        eval_arpg.main(argv[:-1] + [str(tmp_path / "last.pt")])
    assert torch.load(tmp_path / "last.pt")["step"] == 3
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="is not a recognition-classifier cache"):
        eval_arpg.main(argv)
    cached.unlink()
    colour_only = eval_arpg.main(argv + ["--no-grey"])
    assert trained == ["colour", "grey", "colour"] and "grey" not in colour_only["recognised"]
    # the grey file is the grey judge's alone: given as a colour cache, it is not taken for one
    eval_arpg.main(argv[:-1] + [str(tmp_path / "classifier-grey.pt"), "--no-grey"])
    assert trained[-1] == "colour" and "or is another view's classifier" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--recognise takes a count"):
        eval_arpg.main(argv[:argv.index("--train")] + ["--recognise", "2"])


def test_the_cached_classifier_does_not_depend_on_the_thread_count(monkeypatch):
    """Nor on the caller's random state. Trained on 2 threads instead of 1, float sums are added in
    another order (30 steps: weights 2e-6 apart, and it grows with steps); with dropout drawn from the
    global generator, what ran before moved them by 0.05. The measure trains on one thread, seeded."""
    monkeypatch.setattr(recognise, "STEPS", 30)
    torch.manual_seed(0)
    tokenizer = arpg_core.build_tokenizer("VQ-tiny").eval()
    g = tokenizer.config.grid_size
    codes = torch.randint(0, tokenizer.config.codebook_size, (32, g * g))
    labels = torch.arange(2).repeat_interleave(16)
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            torch.manual_seed(threads)  # as if something else had drawn random numbers before
            model = recognise.cached_classifier(tokenizer, (codes, labels), 2, "squares", None, log=lambda _: None)
            assert torch.get_num_threads() == threads  # the caller's setting is given back
            weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
