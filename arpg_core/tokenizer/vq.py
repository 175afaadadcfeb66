"""VQ image tokenizer with LlamaGen's VQ architecture and parameter names.

Images in [-1, 1] -> encoder -> 1x1 `quant_conv` -> nearest (L2-normalised) code -> 1x1
`post_quant_conv` -> decoder. The module tree mirrors LlamaGen's `VQModel` exactly so that the
published VQ-16 weights load strictly.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arpg_core.config import ConfigBase
from arpg_core.errors import ConfigError
from arpg_core.models.layers import embedding

CODEBOOK_USED_SLOTS = 65536  # size of LlamaGen's `codebook_used` buffer, kept for strict loading


@dataclasses.dataclass
class VQConfig(ConfigBase):
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    codebook_size: int = 16384
    codebook_dim: int = 8
    codebook_l2_norm: bool = True
    in_channels: int = 3
    dropout: float = 0.0
    image_size: int = 256

    PRESETS: ClassVar[dict[str, dict]] = {
        "VQ-16": {},
        # 64 px -> 16x16 tokens; 1.45M parameters, ~6 MB as fp32 safetensors (CPU-trainable).
        "VQ-emoji": dict(
            ch=32, ch_mult=(1, 2, 2), z_channels=64, num_res_blocks=2, codebook_size=1024, image_size=64
        ),
        "VQ-tiny": dict(
            ch=32, ch_mult=(1, 2), z_channels=32, num_res_blocks=1, codebook_size=64, image_size=32
        ),
    }

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        channels = [self.ch * m for m in self.ch_mult] + [self.ch, self.z_channels]
        if any(c % 32 for c in channels):
            raise ConfigError(f"GroupNorm(32) needs channels divisible by 32, got {channels}")
        if self.image_size % self.downsample:
            raise ConfigError(f"image_size {self.image_size} not divisible by {self.downsample}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (t.flatten(2).transpose(1, 2) for t in (self.q(y), self.k(y), self.v(y)))  # [B, HW, C]
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # scale C^-0.5
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right/bottom only) as in LlamaGen/taming, so H/2 exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(
        [
            ResnetBlock(channels, channels, dropout),
            AttnBlock(channels),
            ResnetBlock(channels, channels, dropout),
        ]
    )


def _level(res: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, name: str) -> nn.Module:
    block = nn.Module()
    block.res = nn.ModuleList(res)
    block.attn = nn.ModuleList(attn)
    if resample is not None:
        setattr(block, name, resample)
    return block


def _run_level(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for j, res in enumerate(block.res):
        x = res(x)
        if len(block.attn):
            x = block.attn[j](x)
    return x


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + cfg.ch_mult
        self.conv_blocks = nn.ModuleList()
        for i in range(n):
            c_in, c_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
            res = [
                ResnetBlock(c_in if j == 0 else c_out, c_out, cfg.dropout) for j in range(cfg.num_res_blocks)
            ]
            attn = [AttnBlock(c_out) for _ in range(cfg.num_res_blocks)] if i == n - 1 else []
            down = Downsample(c_out) if i != n - 1 else None
            self.conv_blocks.append(_level(res, attn, down, "downsample"))
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = _mid(c, cfg.dropout)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.conv_blocks:
            x = _run_level(block, x)
            if hasattr(block, "downsample"):
                x = block.downsample(x)
        for layer in self.mid:
            x = layer(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, cfg.dropout)
        self.conv_blocks = nn.ModuleList()
        for i in range(n):  # level 0 is the deepest (largest multiplier)
            c_out = cfg.ch * cfg.ch_mult[n - 1 - i]
            res = [
                ResnetBlock(c if j == 0 else c_out, c_out, cfg.dropout) for j in range(cfg.num_res_blocks + 1)
            ]
            attn = [AttnBlock(c_out) for _ in range(cfg.num_res_blocks + 1)] if i == 0 else []
            up = Upsample(c_out) if i != n - 1 else None
            self.conv_blocks.append(_level(res, attn, up, "upsample"))
            c = c_out
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for layer in self.mid:
            x = layer(x)
        for block in self.conv_blocks:
            x = _run_level(block, x)
            if hasattr(block, "upsample"):
                x = block.upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))


@dataclasses.dataclass
class VQLoss:
    codebook: torch.Tensor
    commitment: torch.Tensor
    entropy: torch.Tensor
    codes: torch.Tensor  # [B, h, w]

    @property
    def total(self) -> torch.Tensor:
        return self.codebook + self.commitment + self.entropy


def _entropy_loss(logits: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Low per-sample entropy, high batch-average entropy: spreads use over the codebook."""
    probs = F.softmax(logits / temperature, dim=-1)
    log_probs = F.log_softmax(logits / temperature, dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg = probs.mean(0)
    avg_entropy = -(avg * torch.log(avg + 1e-5)).sum()
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig, beta: float = 0.25, entropy_weight: float = 0.0):
        super().__init__()
        self.l2_norm, self.beta, self.entropy_weight = cfg.codebook_l2_norm, beta, entropy_weight
        self.embedding = embedding(cfg.codebook_size, cfg.codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        if self.l2_norm and not self.embedding.weight.is_meta:  # no values on meta (and no dynamo import)
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, dim=-1)
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_SLOTS))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight.float()  # the nearest-code search is float32 even in a bf16 tokenizer
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, D] -> code indices [N]."""
        return self.distances(z).argmin(-1)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z, dim=-1) if self.l2_norm else z
        e = self.codebook()
        return z.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(-1) - 2 * z @ e.t()  # [N, K]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> latents [B, D, h, w]."""
        return self.codebook()[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, VQLoss]:
        """z: [B, D, h, w] -> (straight-through quantised z, loss terms)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # [B*h*w, D]
        dist = self.distances(flat)
        codes = dist.argmin(-1)
        z_n = F.normalize(flat, dim=-1) if self.l2_norm else flat
        z_q = self.codebook()[codes]
        codebook_loss = F.mse_loss(z_q, z_n.detach())
        commitment = self.beta * F.mse_loss(z_q.detach(), z_n)
        entropy = self.entropy_weight * _entropy_loss(-dist) if self.entropy_weight > 0 else z.new_zeros(())
        z_q = z_n + (z_q - z_n).detach()
        z_q = z_q.reshape(b, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
        return z_q, VQLoss(codebook_loss, commitment, entropy, codes.reshape(b, h, w))


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig, beta: float = 0.25, entropy_weight: float = 0.0):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg, beta, entropy_weight)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    def codes_digest(self) -> str:
        """A short hash of what decides an image's codes: the config, encoder, quant_conv and codebook.
        A decoder-only fine-tune keeps it, so an ARPG trained on the codes can name its tokenizer."""
        return self._digest(("encoder.", "quant_conv.", "quantize."))

    def weights_digest(self) -> str:
        """A short hash of what decides a reconstruction: the config and every weight, decoder included."""
        return self._digest(("",))

    def _digest(self, prefixes: tuple[str, ...]) -> str:
        """The config and the weights under `prefixes` (not the codebook usage counter), hashed."""
        h = hashlib.sha256(self.config.to_json().encode())
        for key, value in sorted(self.state_dict().items()):
            if key.startswith(prefixes) and "codebook_used" not in key:
                h.update(key.encode())
                h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def _check_images(self, images: torch.Tensor) -> None:
        ds = self.config.downsample
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected images [B, {self.config.in_channels}, H, W], got {list(images.shape)}"
            )
        if images.shape[-1] % ds or images.shape[-2] % ds:
            raise ValueError(f"image height/width must be divisible by {ds}, got {list(images.shape[-2:])}")

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> pre-quantisation latents [B, D, H/ds, W/ds]."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images.to(self.encoder.conv_in.weight.dtype)))  # a bf16 tokenizer too

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> codes [B, H/ds, W/ds] (int64)."""
        z = self.encode_latents(images).float()
        b, d, h, w = z.shape
        return self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).reshape(b, h, w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> images [B, 3, h*ds, w*ds], not clamped."""
        if codes.ndim != 3:
            raise ValueError(f"expected codes [B, h, w], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size})")
        z_q = self.quantize.lookup(codes.long()).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, VQLoss]:
        """Training pass: (reconstruction [B, 3, H, W], VQ loss terms)."""
        z_q, loss = self.quantize(self.encode_latents(images))
        return self.decoder(self.post_quant_conv(z_q)), loss
