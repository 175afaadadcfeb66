"""Build the emoji class-conditional data set from the system emoji font.

    python -m arpg_core.data.emoji --out data/emoji --size 64
    python -m arpg_core.data.emoji --out data/emoji-mix --twemoji emoji-datasource-twitter-16.0.0.tgz
    python -m arpg_core.data.emoji --out data/emoji-mix3 --twemoji emoji-datasource-twitter-16.0.0.tgz \
        --fluent lobehub-fluent-emoji-3d-1.1.0.tgz
    python -m arpg_core.data.emoji --out data/emoji-style --by-style --twemoji ... --fluent ...

Classes are the 9 emoji groups of `emoji-test.txt` (group `Component` skipped). Images land in
`<out>/<split>/<group_index>_<slug>/<subgroup_index>_<slug>/<codepoints>.png`, readable by
`ImageFolderDataset`: by group (a class folder takes the images of its sub-folders), or with
`subclasses=True` (the trainers' `--subclasses`) by subgroup, each group's 3 to 18 subgroups
(`animal-mammal`, `food-fruit`, `clothing`, ...) a class of their own, grouped under their group.

`--twemoji` adds a second drawing of every training emoji: Twitter's Twemoji (CC-BY 4.0), from the
npm package `emoji-datasource-twitter` (`npm pack emoji-datasource-twitter@16.0.0`; the .tgz or its
unpacked folder). They land beside the Noto ones as `<codepoints>.twemoji.png`, prepared the same
way. Held-out emoji get no Twemoji drawing at all, so the held-out split is the Noto one, unchanged,
and no held-out emoji is seen in training in either style.

`--fluent` adds a third: Microsoft's Fluent Emoji in their 3D style (MIT), from the npm package
`@lobehub/fluent-emoji-3d` (`npm pack @lobehub/fluent-emoji-3d@1.1.0`), as `<codepoints>.fluent.png`,
training emoji only, as for Twemoji.

`--by-style` files each image under its drawing style instead:
`<split>/<group>/<style>/<subgroup>/<codepoints>[.<style>].png`, style `noto`, `twemoji` or `fluent`.
Read by group it is the same data set; with `--subclasses` each (group, style) pair is a class
("Animals & Nature / Twemoji"), so a model learns each style under its own condition and draws one
style per image rather than a blend of them; asking for the group draws a style by the odds of its
training images. The held-out split has only the `noto` style.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features
from tqdm import tqdm

from arpg_core.errors import DataError

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only bitmap strike NotoColorEmoji offers
INSTALL_HINT = "apt-get install fonts-noto-color-emoji unicode-data"
SKIP_GROUPS = {"Component"}
VAL_PERCENT = 5
NOTO_STYLE, NOTO_LABEL = "noto", "Noto"  # the font's own drawing: its folder with --by-style, its name


@dataclasses.dataclass(frozen=True)
class EmojiEntry:
    codepoints: str  # "1F600" or "1F469-200D-1F4BB"
    group: str
    name: str
    subgroup: str = ""

    @property
    def text(self) -> str:
        return "".join(chr(int(cp, 16)) for cp in self.codepoints.split("-"))


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def check_sources(emoji_test: Path = EMOJI_TEST, font: Path = EMOJI_FONT) -> None:
    missing = [str(p) for p in (emoji_test, font) if not p.is_file()]
    if missing:
        raise DataError(f"missing {', '.join(missing)}; install with: {INSTALL_HINT}")
    if not features.check("raqm"):
        # Without complex text layout, ZWJ sequences, skin tones and flags render as several glyphs
        # side by side: a silently wrong People & Body and Flags.
        raise DataError("Pillow has no Raqm text layout, so emoji sequences (flags, families, skin tones) would "
                        "render as separate glyphs; install with: apt-get install libfribidi0 libharfbuzz0b")


def parse_emoji_test(path: Path = EMOJI_TEST) -> tuple[list[str], list[EmojiEntry]]:
    """-> (group names in file order, fully-qualified entries outside skipped groups)."""
    groups: list[str] = []
    entries: list[EmojiEntry] = []
    group = subgroup = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group, subgroup = line.split(":", 1)[1].strip(), ""
            if group not in SKIP_GROUPS:
                groups.append(group)
            continue
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
            continue
        if not line.strip() or line.startswith("#") or group in SKIP_GROUPS or group is None:
            continue
        fields, _, comment = line.partition("#")
        codes, _, status = fields.partition(";")
        if status.strip() != "fully-qualified":
            continue
        name = re.sub(r"^\S+\s+E\d+\.\d+\s+", "", comment.strip())
        entries.append(EmojiEntry("-".join(codes.split()), group, name, subgroup))
    return groups, entries


def folder_names(groups: list[str], entries: list[EmojiEntry]) -> tuple[dict, dict]:
    """-> ({group: "<i>_<slug>"}, {(group, subgroup): "<j>_<slug>"}), numbered in the file's order
    (zero-padded, so that sorted folder names keep it)."""
    folders = {g: f"{i}_{slug(g)}" for i, g in enumerate(groups)}
    subgroups: dict[str, list[str]] = {g: [] for g in groups}
    for entry in entries:
        if entry.subgroup not in subgroups[entry.group]:
            subgroups[entry.group].append(entry.subgroup)
    width = len(str(max((len(s) for s in subgroups.values()), default=1) - 1))
    subs = {(g, s): f"{j:0{width}d}_{slug(s)}" for g in groups for j, s in enumerate(subgroups[g])}
    return folders, subs


def split_of(codepoints: str) -> str:
    """Fixed held-out split: ~VAL_PERCENT % of each class by a hash of the codepoints."""
    bucket = int(hashlib.sha1(codepoints.encode()).hexdigest(), 16) % 100
    return "val" if bucket < VAL_PERCENT else "train"


def render(text: str, font: ImageFont.FreeTypeFont, size: int, margin: float = 0.06) -> Image.Image | None:
    """Glyph -> RGB `size` x `size` on white, centred; None when the font draws nothing."""
    canvas = Image.new("RGBA", (FONT_SIZE * 4, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 2, FONT_SIZE // 2), text, font=font, embedded_color=True)
    return centred(canvas, size, margin)


def centred(canvas: Image.Image, size: int, margin: float = 0.06) -> Image.Image | None:
    """RGBA drawing -> its opaque part cropped, centred on a white square with `margin` each side,
    resized to `size`; None when nothing in it is opaque."""
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = int(max(glyph.size) * (1 + 2 * margin))
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.LANCZOS)


TWEMOJI_PACKAGE = "emoji-datasource-twitter"
TWEMOJI_IMAGES = "img/twitter/64"
TWEMOJI_HINT = f"npm pack {TWEMOJI_PACKAGE}@16.0.0"


class _NpmPackage:
    """Files of an npm package: its .tgz as `npm pack` writes it (everything under package/), or the
    folder it unpacks to. `name` and `hint` go into the errors; a subclass fills `images` (upper-case
    codepoints -> file name inside `images_dir`), which `drawing` reads."""

    name = ""
    hint = ""
    images_dir = ""
    images: dict[str, str]

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tar = None
        if self.path.is_file():
            try:
                self._tar = tarfile.open(self.path)
                self._members = {m.name.split("/", 1)[-1]: m for m in self._tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError) as exc:
                raise DataError(f"{self.path} is not a readable .tgz of {self.name} ({exc})") from None
        elif not self.path.is_dir():
            raise DataError(f"{self.path} does not exist; get the package with: {self.hint}")
        self.version = self._version()

    def _read(self, name: str) -> bytes:
        if self._tar is not None:
            return self._tar.extractfile(self._members[name]).read()
        return (self.path / name).read_bytes()

    def _names(self, folder: str) -> list[str]:
        """File names directly inside `folder` of the package."""
        if self._tar is not None:
            prefix = folder.rstrip("/") + "/"
            return [n[len(prefix):] for n in self._members if n.startswith(prefix) and "/" not in n[len(prefix):]]
        where = self.path / folder
        return [p.name for p in where.iterdir() if p.is_file()] if where.is_dir() else []

    def _version(self) -> str:
        try:
            return str(json.loads(self._read("package.json")).get("version", "unknown"))
        except (OSError, KeyError, ValueError, AttributeError):
            return "unknown"

    def drawing(self, codepoints: str, size: int) -> Image.Image | None:
        """The emoji's drawing in this package, prepared as `render` prepares a glyph; None when the
        package has none or its file is unreadable."""
        name = self.images.get(codepoints.upper())
        if name is None:
            return None
        try:
            with Image.open(io.BytesIO(self._read(f"{self.images_dir}/{name}"))) as image:
                return centred(image.convert("RGBA"), size)
        except (OSError, KeyError, ValueError, Image.DecompressionBombError):
            return None


class TwemojiSource(_NpmPackage):
    """Twemoji drawings by codepoints ("1F469-200D-1F4BB"), from the emoji-datasource-twitter npm
    package: its .tgz as npm packs it, or the folder it unpacks to (holding emoji.json)."""

    name = TWEMOJI_PACKAGE
    hint = TWEMOJI_HINT
    images_dir = TWEMOJI_IMAGES
    style = "twemoji"
    label = "Twemoji"
    licence = "images CC-BY 4.0"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            table = json.loads(self._read("emoji.json"))
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{self.path} holds no readable emoji.json of {TWEMOJI_PACKAGE} ({exc}); "
                            f"get the package with: {TWEMOJI_HINT}") from None
        self.images: dict[str, str] = {}
        for entry in table if isinstance(table, list) else []:
            variants = [entry, *(entry.get("skin_variations") or {}).values()]
            for v in variants:
                if isinstance(v, dict) and v.get("has_img_twitter") and v.get("unified") and v.get("image"):
                    self.images[str(v["unified"]).upper()] = str(v["image"])
        if not self.images:
            raise DataError(f"{self.path}/emoji.json lists no Twemoji images; is it {TWEMOJI_PACKAGE}?")


FLUENT_PACKAGE = "@lobehub/fluent-emoji-3d"
FLUENT_IMAGES = "assets"
FLUENT_HINT = f"npm pack {FLUENT_PACKAGE}@1.1.0"


class FluentSource(_NpmPackage):
    """Microsoft's Fluent Emoji in their 3D style (MIT), by codepoints, from the npm package
    @lobehub/fluent-emoji-3d: 256 px images named by lower-case codepoints (assets/1f98a.webp,
    assets/1f469-200d-1f4bb.webp). The .tgz as npm packs it, or the folder it unpacks to."""

    name = FLUENT_PACKAGE
    hint = FLUENT_HINT
    images_dir = FLUENT_IMAGES
    style = "fluent"
    label = "Fluent 3D"
    licence = "images MIT"

    def __init__(self, path: Path):
        super().__init__(path)
        self.images = {n.rsplit(".", 1)[0].upper(): n for n in self._names(FLUENT_IMAGES)
                       if n.lower().endswith((".webp", ".png"))}
        if not self.images:
            raise DataError(f"{self.path} holds no {FLUENT_IMAGES}/<codepoints>.webp images; is it {FLUENT_PACKAGE}? "
                            f"Get the package with: {FLUENT_HINT}")
        if any(n.lower().endswith(".webp") for n in self.images.values()) and not features.check("webp"):
            # Otherwise every drawing would fail to open and the style would silently be missing.
            raise DataError("this Pillow cannot read WebP images, which the Fluent package holds; "
                            "install a Pillow wheel from PyPI (pip install --force-reinstall pillow)")


def source_versions(emoji_test: Path, font: Path) -> dict[str, str]:
    head = emoji_test.read_text(encoding="utf-8").splitlines()[:12]
    version = next((ln.split(":", 1)[1].strip() for ln in head if ln.startswith("# Version:")), "unknown")
    font_obj = ImageFont.truetype(str(font), FONT_SIZE)
    return {
        "emoji_test": f"{emoji_test} (Version {version})",
        "font": f"{font} ({' '.join(font_obj.getname())})",
    }


def _save(picture: Image.Image, group: Path, sub: str, style: str, by_style: bool, name: str) -> None:
    """Write one drawing: `group/sub/name`, or with `by_style` `group/style/sub/name`."""
    folder = group / style / sub if by_style else group / sub
    folder.mkdir(parents=True, exist_ok=True)
    picture.save(folder / name)


def build(out: Path, size: int = 64, emoji_test: Path = EMOJI_TEST, font_path: Path = EMOJI_FONT,
          twemoji: Path | None = None, fluent: Path | None = None, by_style: bool = False) -> dict:
    """Render every emoji into `out`/<split>/...; with `twemoji` and/or `fluent` (npm packages), each
    training emoji also gets that style's drawing as `<codepoints>.<style>.png` beside its Noto one
    (`by_style`: in a folder of its style under the group, the Noto one under `noto`)."""
    check_sources(emoji_test, font_path)
    extras = ([TwemojiSource(twemoji)] if twemoji is not None else []) + \
             ([FluentSource(fluent)] if fluent is not None else [])
    groups, entries = parse_emoji_test(emoji_test)
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    folders, sub_folders = folder_names(groups, entries)
    counts: Counter[tuple[str, str]] = Counter()
    skipped: list[str] = []
    missing: dict[str, list[str]] = {extra.style: [] for extra in extras}
    for entry in tqdm(entries, desc="render", unit="emoji"):
        image = render(entry.text, font, size)
        if image is None:
            skipped.append(entry.codepoints)
            continue
        split = split_of(entry.codepoints)
        group = out / split / folders[entry.group]
        sub = sub_folders[(entry.group, entry.subgroup)]
        _save(image, group, sub, NOTO_STYLE, by_style, f"{entry.codepoints}.png")
        counts[(split, entry.group)] += 1
        for extra in extras if split == "train" else []:
            drawing = extra.drawing(entry.codepoints, size)
            if drawing is None:
                missing[extra.style].append(entry.codepoints)
            else:
                _save(drawing, group, sub, extra.style, by_style, f"{entry.codepoints}.{extra.style}.png")
                counts[(extra.style, entry.group)] += 1
    if by_style:  # the classes of --subclasses: a group's styles
        styles = [(NOTO_STYLE, NOTO_LABEL)] + [(extra.style, extra.label) for extra in extras]
        subclasses = {f"{folders[g]}/{style}": f"{g} / {label}" for g in groups for style, label in styles}
    else:
        subclasses = {f"{folders[g]}/{sub}": f"{g} / {s}" for (g, s), sub in sub_folders.items()}
    meta = {
        "classes": groups,
        "folders": [folders[g] for g in groups],
        "subclasses": subclasses,
        "size": size,
        "counts": {s: {g: counts[(s, g)] for g in groups} for s in ("train", "val")},
        "skipped_empty": skipped,
        "sources": source_versions(emoji_test, font_path),
        "layout": "group/style/subgroup" if by_style else "group/subgroup",
    }
    for extra in extras:
        meta["counts"][f"train_{extra.style}"] = {g: counts[(extra.style, g)] for g in groups}
        meta[f"{extra.style}_missing"] = missing[extra.style]
        meta["sources"][extra.style] = f"{extra.path} ({extra.name} {extra.version}; {extra.licence})"
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("data/emoji"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--twemoji", type=Path, default=None, metavar="PACKAGE",
                        help=f"also draw each training emoji as Twemoji, from this .tgz or folder ({TWEMOJI_HINT})")
    parser.add_argument("--fluent", type=Path, default=None, metavar="PACKAGE",
                        help=f"also draw each training emoji as Microsoft's 3D Fluent Emoji, from this .tgz or "
                             f"folder ({FLUENT_HINT})")
    parser.add_argument("--by-style", action="store_true",
                        help="file each image under its drawing style (<group>/<style>/<subgroup>/), so that "
                             "--subclasses trains one class per group and style")
    args = parser.parse_args(argv)
    if not 8 <= args.size <= 1024:
        parser.error(f"--size must be 8 to 1024 pixels (got {args.size})")
    try:
        meta = build(args.out, args.size, twemoji=args.twemoji, fluent=args.fluent, by_style=args.by_style)
    except DataError as exc:  # the font or the list missing: the install hint, not a traceback
        raise SystemExit(f"emoji: error: {exc}") from None
    for split, per_class in meta["counts"].items():
        print(split, sum(per_class.values()), per_class)
    print(f"skipped {len(meta['skipped_empty'])} empty glyphs; wrote {args.out / 'meta.json'}")


if __name__ == "__main__":
    main()
