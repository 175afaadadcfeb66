"""Build the app's small assets: ImageNet class names and the example images.

    python scripts/make_app_assets.py --timm-wheel timm-*.whl   # `pip download timm --no-deps`

ImageNet names are the lemmas timm ships as data (`imagenet_synsets.txt` gives the class order,
`imagenet_synset_to_lemma.txt` the names). Examples are emoji rendered from the system emoji font at
the embedded model's 64 px, plus one non-square scene, each a few KB.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from PIL import Image, ImageFont

from arpg_core.data.emoji import EMOJI_FONT, FONT_SIZE, render

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = {
    "grinning": "\U0001f600",
    "fox": "\U0001f98a",
    "pizza": "\U0001f355",
    "rocket": "\U0001f680",
    "soccer": "\u26bd",
    "heart": "\u2764\ufe0f",
}


def imagenet_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        synsets = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = dict(
            line.split("\t", 1)
            for line in z.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines()
            if line.strip()
        )
    names = [lemmas[s].strip() for s in synsets]
    if len(names) != 1000:
        raise SystemExit(f"expected 1000 ImageNet classes, got {len(names)}")
    return names


def examples(size: int = 64) -> dict[str, Image.Image]:
    font = ImageFont.truetype(str(EMOJI_FONT), FONT_SIZE)
    out = {name: render(text, font, size) for name, text in EXAMPLES.items()}
    # A non-square scene (96 x 64): three emoji side by side on white.
    wide = Image.new("RGB", (96, 64), "white")
    for i, text in enumerate(("\U0001f333", "\U0001f3e0", "\U0001f333")):
        glyph = render(text, font, 32)
        wide.paste(glyph, (i * 32, 28))
    out["village-wide"] = wide
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timm-wheel", type=Path, help="a timm wheel to read the ImageNet names from")
    args = parser.parse_args()
    if args.timm_wheel:
        (ASSETS / "imagenet_classes.txt").write_text("\n".join(imagenet_names(args.timm_wheel)) + "\n")
    folder = ASSETS / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in examples().items():
        image.save(folder / f"{name}.png", optimize=True)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
