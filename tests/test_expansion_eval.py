"""The windowed-vs-global expansion comparison runs end to end on the embedded model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from arpg_core.errors import DataError
from arpg_core.expansion_eval import VARIANTS, class_of, main, pairs
from tests.conftest import ROOT

FOX = ROOT / "assets" / "examples" / "fox.png"


def test_rows_for_every_variant_and_baseline(tmp_path, capsys):
    small, large = tmp_path / "small" / "2_animals", tmp_path / "large" / "2_animals"
    small.mkdir(parents=True)
    large.mkdir(parents=True)
    fox = Image.open(FOX).convert("RGB")
    fox.save(small / "fox.png")
    fox.resize((128, 128), Image.BICUBIC).save(large / "fox.png")  # "truth" = the bicubic upscale itself
    (small / "unmatched.png").write_bytes((small / "fox.png").read_bytes())
    names = [f"class {i}" for i in range(9)]
    assert pairs(small.parent, large.parent, None, names) == [(small / "fox.png", large / "fox.png", 2)]
    assert class_of(small.parent / "Flags", [*names[:8], "Flags"]) == 8 and class_of(small.parent, names) is None
    with pytest.raises(DataError, match="names class 12"):
        class_of(small.parent / "12_more", names)
    main(["--small", str(small.parent), "--large", str(large.parent), "--limit", "1", "--steps", "8"])
    rows = {row["variant"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {*VARIANTS, "bicubic", "vq_roundtrip"}
    assert rows["bicubic"]["psnr_vs_truth"] > 60  # identical images: only rounding differs
    assert sum(rows[v]["best_on"] for v in VARIANTS) == 1
    assert all(5 < rows[v]["psnr_vs_truth"] < 60 and rows[v]["psnr_to_source"] > 5 for v in VARIANTS)
    # interpolated and extrapolated positions are different methods; windows take more steps in all
    assert rows["global-ntk"]["psnr_vs_truth"] != rows["global-plain"]["psnr_vs_truth"]
    assert rows["windowed"]["sampling_steps"] > rows["global-ntk"]["sampling_steps"] > 0
    with pytest.raises(DataError):
        pairs(small.parent, tmp_path / "nowhere", None, names)
