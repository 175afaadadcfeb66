"""The ARPG decoupled two-pass causal transformer.

Pass 1 (content) is causal self-attention over [class, t_1, t_2, ...] in generation order. Its
output is normalised once into a shared K/V. Pass 2 (queries) starts from the mask-token
embedding at each target position and only attends to that shared K/V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arpg_core.config import ConfigBase
from arpg_core.errors import ConfigError
from arpg_core.models.layers import Block, QueryAttention, RMSNorm, SelfAttention, embedding, ffn_hidden_dim
from arpg_core.models.rotary import apply_rope, rope_table_2d
from arpg_core.sampling.cache import DecodeCache, KVCache


@dataclass
class ARPGConfig(ConfigBase):
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    vocab_size: int = 16384
    num_classes: int = 1000
    grid_size: int = 16
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None

    PRESETS = {
        "ARPG-L": dict(dim=1024, n_layer=24, n_head=16),
        "ARPG-XL": dict(dim=1280, n_layer=36, n_head=20),
        "ARPG-XXL": dict(dim=1536, n_layer=48, n_head=24),
        # Where the embedded emoji model started: 9 emoji groups over the VQ-emoji codebook (the
        # shipped one was grown deeper from it with training.grow; see the README's model card).
        "ARPG-emoji": dict(dim=192, n_layer=8, n_head=3, vocab_size=1024, num_classes=9),
        # Small configs for tests and benchmarks.
        "ARPG-tiny": dict(dim=64, n_layer=4, n_head=2, vocab_size=64, num_classes=4, grid_size=4,
                          multiple_of=32),
        "ARPG-small": dict(dim=256, n_layer=8, n_head=4, vocab_size=1024, num_classes=10),
    }

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ConfigError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ConfigError(f"head dim {self.head_dim} must be a multiple of 4 for 2D rotary")
        if self.n_layer % 2:
            raise ConfigError(f"n_layer {self.n_layer} must be even (half content, half query)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def seq_len(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def mask_token(self) -> int:
        return self.vocab_size

    @property
    def null_class_token(self) -> int:
        return self.vocab_size + self.num_classes + 1

    @property
    def table_size(self) -> int:
        # codes, mask, classes, null class, unused "none" token
        return self.vocab_size + self.num_classes + 3


class TwoPassStack(nn.Module):
    """Container whose attribute names match the published checkpoints (`layers.*`)."""

    def __init__(self, cfg: ARPGConfig):
        super().__init__()
        hidden = ffn_hidden_dim(cfg.dim, cfg.multiple_of, cfg.ffn_dim_multiplier)
        half = cfg.n_layer // 2
        self.self_dec = nn.ModuleList(
            Block(SelfAttention(cfg.dim, cfg.n_head), cfg.dim, hidden, cfg.norm_eps) for _ in range(half)
        )
        self.cross_dec = nn.ModuleList(
            Block(QueryAttention(cfg.dim, cfg.n_head), cfg.dim, hidden, cfg.norm_eps) for _ in range(half)
        )
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.to_k = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.to_v = nn.Linear(cfg.dim, cfg.dim, bias=False)


class ARPG(nn.Module):
    def __init__(self, config: ARPGConfig):
        super().__init__()
        self.config = config
        self.embeddings = embedding(config.table_size, config.dim)
        self.layers = TwoPassStack(config)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)

    # ---- token ids -------------------------------------------------------------------------
    def class_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """labels[B] (-1 = null class) -> token ids [B]."""
        cfg = self.config
        if labels.numel() and (labels.max() >= cfg.num_classes or labels.min() < -1):
            raise ConfigError(f"class labels must be in -1..{cfg.num_classes - 1}, got {labels.tolist()}")
        return torch.where(labels < 0, cfg.null_class_token, cfg.vocab_size + 1 + labels)

    def rope_table(self, grid_h: int | None = None, grid_w: int | None = None, **kw) -> torch.Tensor:
        cfg = self.config
        table = rope_table_2d(grid_h or cfg.grid_size, grid_w or cfg.grid_size, cfg.head_dim,
                              cfg.rope_base, **kw)
        return table.to(self.embeddings.weight.device)

    # ---- the two passes --------------------------------------------------------------------
    def content_pass(self, tokens, rope, cache: DecodeCache | None = None, mask=None):
        """tokens [B, n] with rope [B, n, D/2, 2] -> shared (K, V), each [B, H, L, D]."""
        x = self.embeddings(tokens)
        start = cache.length if cache is not None else 0
        for i, block in enumerate(self.layers.self_dec):
            layer_cache = cache.content[i] if cache is not None else None
            x = block(x, rope=rope, cache=layer_cache, start=start, mask=mask)
        x = self.layers.norm(x)
        b, n, _ = x.shape
        h = self.config.n_head
        k = apply_rope(self.layers.to_k(x).view(b, n, h, -1), rope).transpose(1, 2)
        v = self.layers.to_v(x).view(b, n, h, -1).transpose(1, 2)  # [B, H, n, D]
        if cache is not None:
            k, v = cache.shared.write(start, k, v)
            cache.length = start + n
        return k, v

    def query_pass(self, rope, k, v, causal: bool = False) -> torch.Tensor:
        """One query slot per target position (rope [B, m, D/2, 2]) -> float32 logits [B, m, V]."""
        b, m = rope.shape[:2]
        mask_id = torch.full((b, m), self.config.mask_token, device=rope.device)
        q = self.embeddings(mask_id)
        for block in self.layers.cross_dec:
            q = block(q, rope=rope, k=k, v=v, causal=causal)
        return self.head(self.norm(q)).float()

    # ---- entry points ----------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        tokens [B, N] in raster order, labels [B] (-1 = null), order [B, N] a permutation per row.
        logits[:, i] predicts the token at position order[:, i] from the class and the tokens at
        order[:, :i]. Returns float32 [B, N, V].
        """
        cfg = self.config
        if tokens.shape[1] != cfg.seq_len or order.shape != tokens.shape:
            raise ConfigError(f"tokens and order must be [B, {cfg.seq_len}], got {tuple(tokens.shape)} "
                              f"and {tuple(order.shape)}")
        table = self.rope_table()
        permuted = tokens.gather(1, order)
        content = torch.cat([self.class_tokens(labels)[:, None], permuted[:, :-1]], dim=1)  # [B, N]
        content_slots = torch.cat([torch.zeros_like(order[:, :1]), order[:, :-1] + 1], dim=1)
        k, v = self.content_pass(content, table[content_slots])
        # Query i sees keys 0..i (the class and the first i tokens): a causal mask of equal lengths.
        return self.query_pass(table[order + 1], k, v, causal=True)

    def new_cache(self, batch: int, max_len: int, rope: torch.Tensor, dtype=None) -> DecodeCache:
        cfg = self.config
        dtype = dtype or self.embeddings.weight.dtype
        device = self.embeddings.weight.device
        make = lambda: KVCache(batch, cfg.n_head, max_len, cfg.head_dim, dtype, device)
        return DecodeCache([make() for _ in self.layers.self_dec], make(), rope.to(device))

    def decode_step(self, tokens, slots, query_slots, cache: DecodeCache, causal: bool = True) -> torch.Tensor:
        """Append content tokens [B, n] at rotary slots [B, n] to the cache, then predict the
        target slots [B, m]. New tokens see the whole cache and, among themselves, only earlier
        ones (causal, as in training) or all of each other (causal=False, as the authors' sampler
        does); queries see every cached key and not each other. Returns float32 logits [B, m, V]."""
        n = tokens.shape[1]
        start = cache.length
        mask = None  # with a cache and no mask, every new token sees keys 0..start+n
        if causal:
            key_idx = torch.arange(start + n, device=tokens.device)
            mask = key_idx[None, :] <= (start + torch.arange(n, device=tokens.device))[:, None]  # [n, L]
        k, v = self.content_pass(tokens, cache.rope[slots], cache=cache, mask=mask)
        return self.query_pass(cache.rope[query_slots], k, v)
