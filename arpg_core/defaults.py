"""Where the embedded default model lives, and the environment variables that override it."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_MODEL = ASSETS / "arpg_emoji.safetensors"
EMBEDDED_TOKENIZER = ASSETS / "vq_emoji.safetensors"


def default_model_source() -> str:
    return os.environ.get("ARPG_MODEL") or str(EMBEDDED_MODEL)


def default_tokenizer_source() -> str:
    return os.environ.get("ARPG_TOKENIZER") or str(EMBEDDED_TOKENIZER)
