"""The model registry: which weights the picker offers, and loading them once per process."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from arpg_core.defaults import ASSETS, EMBEDDED_MODEL, EMBEDDED_TOKENIZER
from arpg_core.pipeline import Pipeline

EMBEDDED = "Emoji (embedded)"
LLAMAGEN_VQ = "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model: str  # a local path or hf://owner/repo/file
    tokenizer: str
    cfg_scale: float  # the guidance the weights were published with
    about: str


def _published(name: str, file: str, cfg: float, params: str) -> ModelSpec:
    return ModelSpec(
        name,
        f"hf://hp-l33/ARPG/{file}",
        LLAMAGEN_VQ,
        cfg,
        f"{params} ImageNet 256 px model (downloaded from the Hugging Face hub)",
    )


PUBLISHED = (
    _published("ARPG-L", "arpg_300m.pt", 4.5, "320M-parameter"),
    _published("ARPG-XL", "arpg_700m.pt", 6.0, "719M-parameter"),
    _published("ARPG-XXL", "arpg_1b.pt", 7.5, "1.3B-parameter"),
)


def registry(env: dict[str, str] | None = None) -> dict[str, ModelSpec]:
    """The picker's entries, the start-up model first. `ARPG_MODEL` / `ARPG_TOKENIZER` (a path or
    hf:// id) replace the embedded emoji weights as the start-up model, e.g. on a Space."""
    env = os.environ if env is None else env
    model = env.get("ARPG_MODEL") or str(EMBEDDED_MODEL)
    tokenizer = env.get("ARPG_TOKENIZER") or str(EMBEDDED_TOKENIZER)
    published = {spec.name: spec for spec in PUBLISHED}
    match = next((s for s in PUBLISHED if s.model == model), None)
    if match and env.get("ARPG_TOKENIZER") in (None, "", match.tokenizer):
        return {match.name: match, **{k: v for k, v in published.items() if k != match.name}}
    about = "9 emoji groups, 64 px, small enough for a CPU"
    if "ARPG_MODEL" in env:
        about = f"start-up model from ARPG_MODEL ({Path(model).name})"
    return {EMBEDDED: ModelSpec(EMBEDDED, model, tokenizer, 4.0, about), **published}


def imagenet_names() -> list[str]:
    return (ASSETS / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()


class ModelCache:
    """Loaded pipelines by name: the start-up model stays, plus the one published model last used,
    so switching between the big ones does not keep several in memory."""

    def __init__(self, specs: dict[str, ModelSpec], device: str | None = None):
        self.specs = specs
        self.default = next(iter(specs))
        self.device = device
        self._loaded: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, name: str | None) -> Pipeline:
        name = name or self.default
        if name not in self.specs:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(self.specs)}")
        pipeline = self._loaded.get(name)  # one lookup: another session may evict it right after
        if pipeline is not None:
            return pipeline
        with self._lock:  # one lock per name, so a long download does not hold up the loaded models
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            pipeline = self._loaded.get(name)
            if pipeline is None:
                pipeline = self._load(self.specs[name])
                self._store(name, pipeline)
        return pipeline

    def _load(self, spec: ModelSpec) -> Pipeline:
        pipeline = Pipeline.load(spec.model, spec.tokenizer, device=self.device)
        if not getattr(pipeline.model, "class_names", None) and len(pipeline.class_names) == 1000:
            pipeline.class_names = imagenet_names()  # published .pt files carry no names
        return pipeline

    def _store(self, name: str, pipeline: Pipeline) -> None:
        with self._lock:
            for other in [k for k in self._loaded if k not in (self.default, name)]:
                del self._loaded[other]
            self._loaded[name] = pipeline

    def renderer(self, name: str) -> Pipeline:
        """A loaded pipeline that can draw `name`'s tokens: its own, or failing that one with the same
        tokenizer (the published models share LlamaGen's VQ), so scrubbing an old run does not
        reload a model that switching has since evicted. Loads `name` only when neither is there."""
        with self._lock:
            loaded = dict(self._loaded)
        if name in loaded:
            return loaded[name]
        tokenizer = self.specs[name].tokenizer if name in self.specs else None
        for other, pipeline in loaded.items():
            if self.specs[other].tokenizer == tokenizer:
                return pipeline
        return self.get(name)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded
