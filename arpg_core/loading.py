"""Build, load and save models and tokenizers.

Sources are local `.pt` / `.pth` / `.bin` / `.safetensors` files or `hf://owner/repo/filename`.
Torch files are read with `weights_only=True` only. Our own format is safetensors with the
config and class names in its metadata, so one file describes itself.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arpg_core.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    HubUnavailableError,
    ShapeMismatchError,
    UnsafeCheckpointError,
)
from arpg_core.models.arpg import ARPG, ARPGConfig
from arpg_core.models.layers import ffn_hidden_dim
from arpg_core.tokenizer.vq import VQConfig, VQModel

WRAPPER_KEYS = ("model", "ema", "module", "state_dict")
# Derived buffers some training codes save; they are recomputed, never loaded.
DERIVED_SUFFIXES = ("freqs_cis", "causal_mask")
FORMAT = "arpg-studio"
# Our int8 files: each 2-D weight as int8 rows beside one float32 scale per row (weight = q * scale),
# every other float tensor in bfloat16. Metadata "storage" names the layout.
INT8_LAYOUT = "int8-rows"
SCALE_SUFFIX = ":scale"


# ---- sources ---------------------------------------------------------------------------------
def resolve_source(source: str | Path) -> Path:
    """A local path, or `hf://owner/repo/path/in/repo` fetched through the hub cache."""
    text = str(source)
    if text.startswith("hf://"):
        return _hub_file(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    return path


def _hub_file(uri: str) -> Path:
    parts = uri[len("hf://"):].split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(f"hub sources look like hf://owner/repo/filename, got {uri!r}")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except hub_errors.LocalEntryNotFoundError:
        raise HubUnavailableError(
            f"{filename} from {repo_id} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline?). Download it once with network access, or pass a local file."
        ) from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.EntryNotFoundError,
            hub_errors.RevisionNotFoundError) as exc:
        raise HubUnavailableError(f"the hub has no {filename} in {repo_id}: {exc}") from None
    except hub_errors.HFValidationError as exc:  # "my org/repo", "a--b/c": not a valid repo name
        raise CheckpointError(f"{uri!r} does not name a hub repository: {exc}") from None
    except (OSError, hub_errors.HfHubHTTPError) as exc:
        raise HubUnavailableError(f"could not fetch {uri}: {exc}") from None


# ---- reading -------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (state dict, safetensors metadata or {})."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UnsafeCheckpointError(
                f"{path.name} needs arbitrary code to unpickle and was refused (only plain tensors "
                "and containers are loaded). Convert it to safetensors from a trusted environment."
            ) from None
        raise CorruptCheckpointError(f"{path.name} is not a readable torch checkpoint: {exc}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"{path.name} is truncated or not a torch checkpoint: {exc}") from None
    return _unwrap(obj, path.name), {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path.name} is not a valid safetensors file: {exc}") from None


def quantize_int8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Symmetric per-row int8 for the 2-D float tensors (linear and embedding weights: a quarter of
    their float32 bytes), bfloat16 for the other float tensors. Rows of zeros stay exactly zero."""
    out = {}
    for key, value in sd.items():
        if value.is_floating_point() and value.ndim == 2:
            w = value.float()
            if not torch.isfinite(w).all():  # one NaN or inf would take its whole row with it
                raise CheckpointError(f"{key} holds NaN or infinite values; it cannot be stored as int8")
            scale = w.abs().amax(dim=1) / 127
            q = w / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # an all-zero row: 0 / tiny
            out[key] = q.round().clamp(-127, 127).to(torch.int8)
            out[key + SCALE_SUFFIX] = scale
        else:
            out[key] = value.to(torch.bfloat16) if value.is_floating_point() else value
    return out


def dequantize_int8(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The inverse of `quantize_int8` (float32 weights); a scale without its weight, or an int8
    weight without its scale, is a damaged file."""
    out = {}
    for key, value in sd.items():
        if key.endswith(SCALE_SUFFIX):
            base = key[:-len(SCALE_SUFFIX)]
            if base not in sd or sd[base].dtype != torch.int8:
                raise CorruptCheckpointError(f"{name}: scale {key} has no int8 weight {base}")
            continue
        if value.dtype == torch.int8:
            scale = sd.get(key + SCALE_SUFFIX)
            if (scale is None or value.ndim != 2 or scale.shape != value.shape[:1] or not scale.is_floating_point()
                    or not torch.isfinite(scale).all() or (scale < 0).any()):
                raise CorruptCheckpointError(f"{name}: int8 weight {key} has no matching per-row scale")
            value = value.float() * scale.float()[:, None]
        out[key] = value
    return out


def read_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's safetensors metadata without reading its tensors ({} for other formats)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path.name} is not a valid safetensors file: {exc}") from None


def _unwrap(obj: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptCheckpointError(
            f"{name} holds no state dict (looked under {', '.join(WRAPPER_KEYS)} and at the top level)"
        )
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
            key = key.removeprefix(prefix)
        if not key.endswith(DERIVED_SUFFIXES):
            out[key] = value
    return out


# ---- config inference ----------------------------------------------------------------------
def _count(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def infer_arpg_config(sd: dict[str, torch.Tensor], head_dim: int = 64) -> ARPGConfig:
    try:
        table, dim = sd["embeddings.weight"].shape
        vocab = sd["head.weight"].shape[0]
        hidden = sd["layers.self_dec.0.ffn.w1.weight"].shape[0]
    except KeyError as exc:
        raise ShapeMismatchError(f"not an ARPG checkpoint: no {exc.args[0]}") from None
    multiple = next((m for m in (256, 128, 64, 32, 16, 8, 1) if ffn_hidden_dim(dim, m, None) == hidden), None)
    extra = {} if multiple else {"ffn_dim_multiplier": hidden / int(2 * 4 * dim / 3)}
    return ARPGConfig(dim=dim, n_layer=2 * _count(sd, "layers.self_dec."), n_head=max(1, dim // head_dim),
                      vocab_size=vocab, num_classes=table - vocab - 3, multiple_of=multiple or 1, **extra)


def infer_vq_config(sd: dict[str, torch.Tensor]) -> VQConfig:
    try:
        ch, in_ch = sd["encoder.conv_in.weight"].shape[:2]
        levels = _count(sd, "encoder.conv_blocks.")
        mult = tuple(sd[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch for i in range(levels))
        size, cdim = sd["quantize.embedding.weight"].shape
        z = sd["encoder.conv_out.weight"].shape[0]
    except KeyError as exc:
        raise ShapeMismatchError(f"not a VQ tokenizer checkpoint: no {exc.args[0]}") from None
    return VQConfig(ch=ch, ch_mult=mult, z_channels=z, num_res_blocks=_count(sd, "encoder.conv_blocks.0.res."),
                    codebook_size=size, codebook_dim=cdim, in_channels=in_ch)


# ---- building and loading --------------------------------------------------------------------
def build_model(config: str | dict | ARPGConfig, device: str | torch.device = "cpu") -> ARPG:
    with torch.device(device):
        return ARPG(ARPGConfig.resolve(config))


def build_tokenizer(config: str | dict | VQConfig, device: str | torch.device = "cpu") -> VQModel:
    with torch.device(device):
        return VQModel(VQConfig.resolve(config))


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit the config:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise ShapeMismatchError("\n".join(lines))
    module.load_state_dict(sd, strict=True, assign=True)


def _load(source, config, kind: str, dtype, device):
    path = resolve_source(source)
    sd, meta = read_checkpoint(path)
    ours = meta.get("format") == FORMAT  # another program's metadata is not read as ours
    if ours and meta.get("kind") != kind:
        raise CheckpointError(f"{path.name} holds a {meta.get('kind')} checkpoint, not a {kind}")
    layout = meta.get("storage") if ours else None
    if layout == INT8_LAYOUT:
        sd = dequantize_int8(sd, path.name)
    elif layout is not None:
        raise CheckpointError(f"{path.name} stores its weights as {layout!r}, which this version cannot read "
                              f"(it reads float files and {INT8_LAYOUT!r})")
    cfg_cls, infer = (ARPGConfig, infer_arpg_config) if kind == "arpg" else (VQConfig, infer_vq_config)
    if config is not None:
        cfg = cfg_cls.resolve(config)
    elif ours and "config" in meta:
        cfg = cfg_cls.from_dict(_metadata_json(meta, "config", dict, path.name))
    else:
        cfg = infer(sd)
    module = (build_model if kind == "arpg" else build_tokenizer)(cfg, device="meta")
    _load_strict(module, sd, path.name)
    module = module.to(device=device, dtype=dtype)
    names = _metadata_json(meta, "class_names", list, path.name) if ours and "class_names" in meta else None
    if names is not None and not all(isinstance(n, str) for n in names):
        raise CorruptCheckpointError(f"{path.name}: its class names are not all text")
    module.class_names = names
    groups = _metadata_json(meta, "class_groups", list, path.name) if ours and "class_groups" in meta else None
    if groups is not None and (kind != "arpg" or len(groups) != cfg.num_classes
                               or not all(isinstance(g, str) and g for g in groups)):
        raise CorruptCheckpointError(f"{path.name}: its class groups are not one name for each of its "
                                     f"{getattr(cfg, 'num_classes', 0)} classes")
    module.class_groups = groups
    counts = _metadata_json(meta, "class_counts", list, path.name) if ours and "class_counts" in meta else None
    if counts is not None and (kind != "arpg" or len(counts) != cfg.num_classes
                               or not all(isinstance(n, int) and n >= 0 for n in counts)):
        raise CorruptCheckpointError(f"{path.name}: its class counts are not a count for each of its "
                                     f"{getattr(cfg, 'num_classes', 0)} classes")
    module.class_counts = counts
    return module.eval().requires_grad_(False)


def _metadata_json(meta: dict[str, str], key: str, kind: type, name: str):
    """One JSON field of our metadata, of the expected type, or CorruptCheckpointError."""
    try:
        value = json.loads(meta[key])
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, kind):
        raise CorruptCheckpointError(f"{name}: its {key} metadata is not valid ({kind.__name__} as JSON expected)")
    return value


def load_model(source: str | Path, config: str | dict | ARPGConfig | None = None, *,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ARPG:
    """Load an ARPG checkpoint (published `.pt` or our `.safetensors`), strictly."""
    return _load(source, config, "arpg", dtype, device)


def load_tokenizer(source: str | Path, config: str | dict | VQConfig | None = None, *,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> VQModel:
    """Load a VQ tokenizer checkpoint (LlamaGen `.pt` or our `.safetensors`), strictly."""
    return _load(source, config, "vq", dtype, device)


# ---- saving ----------------------------------------------------------------------------------
def save_checkpoint(module: ARPG | VQModel, path: str | Path, *, class_names: list[str] | None = None,
                    dtype: torch.dtype | None = None, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write our self-describing safetensors file (config and class names in the metadata). `dtype`
    casts the float tensors; torch.int8 stores the 2-D weights as int8 rows with per-row scales
    (about half a bfloat16 file; `load_model` turns them back into floats)."""
    from safetensors.torch import save_file

    kind = "arpg" if isinstance(module, ARPG) else "vq" if isinstance(module, VQModel) else None
    if kind is None:
        raise ConfigError(f"cannot save a {type(module).__name__}")
    if dtype is not None and not (dtype.is_floating_point or dtype == torch.int8):
        raise ConfigError(f"weights are stored as a float dtype or torch.int8, not {dtype}")
    if dtype == torch.int8 and kind == "vq":  # int8 would move the codebook, so the codes
        raise ConfigError("int8 storage is for generators: a tokenizer's codes must stay exactly the learned ones")
    sd = {}
    for k, v in module.state_dict().items():
        v = v.detach().to("cpu")
        if dtype not in (None, torch.int8) and v.is_floating_point():
            v = v.to(dtype)
        sd[k] = v
    meta = {"format": FORMAT, "kind": kind, "config": module.config.to_json(), **(extra_metadata or {})}
    if dtype == torch.int8:
        sd = quantize_int8(sd)
        meta["storage"] = INT8_LAYOUT
    sd = {k: v.contiguous() for k, v in sd.items()}
    names = class_names if class_names is not None else getattr(module, "class_names", None)
    if names is not None:
        meta["class_names"] = json.dumps(list(names))
    groups = getattr(module, "class_groups", None)  # subclasses: the group each class belongs to
    if groups is not None:
        if len(groups) != module.config.num_classes:
            raise ConfigError(f"{len(groups)} class groups for {module.config.num_classes} classes")
        meta["class_groups"] = json.dumps(list(groups))
    counts = getattr(module, "class_counts", None)  # training images per class: the odds of a group's classes
    if counts is not None:
        if len(counts) != module.config.num_classes:
            raise ConfigError(f"{len(counts)} class counts for {module.config.num_classes} classes")
        meta["class_counts"] = json.dumps([int(n) for n in counts])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # a reader never sees a half-written file
    try:
        save_file(sd, str(tmp), metadata=meta)
        tmp.replace(path)  # fails when `path` is a folder: the weights must not stay behind as .tmp
    finally:
        tmp.unlink(missing_ok=True)
    return path
