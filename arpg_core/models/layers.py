"""Building blocks shared by both passes: RMSNorm, SwiGLU FFN, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arpg_core.models.rotary import apply_rope


def embedding(num: int, dim: int) -> nn.Embedding:
    """An nn.Embedding that skips its N(0, 1) init when built on the meta device (the loaders do that):
    `normal_` on meta goes through torch._refs, whose first call imports torch._dynamo (~2-3 s)."""
    weight = torch.empty(num, dim)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(num, dim, _weight=weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def ffn_hidden_dim(dim: int, multiple_of: int, multiplier: float | None) -> int:
    hidden = int(2 * 4 * dim / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """q: [B, Lq, H, D], k/v: [B, H, Lk, D] -> [B, Lq, H*D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2).flatten(2)  # [B, Lq, H*D]


class SelfAttention(nn.Module):
    """Pass-1 attention: its own q, k, v over the content stream."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, rope, cache=None, start: int = 0, mask=None):
        b, n, _ = x.shape
        q = apply_rope(self.to_q(x).view(b, n, self.n_head, -1), rope)
        k = apply_rope(self.to_k(x).view(b, n, self.n_head, -1), rope).transpose(1, 2)
        v = self.to_v(x).view(b, n, self.n_head, -1).transpose(1, 2)  # [B, H, n, D]
        if cache is not None:
            k, v = cache.write(start, k, v)
        # Without a cache the stream is attended causally; with one, `mask` carries causality.
        return self.proj(attend(q, k, v, mask, causal=cache is None))


class QueryAttention(nn.Module):
    """Pass-2 attention: only a query projection; keys and values are the shared K/V."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, rope, k, v, mask=None, causal: bool = False):
        b, n, _ = x.shape
        q = apply_rope(self.to_q(x).view(b, n, self.n_head, -1), rope)
        return self.proj(attend(q, k, v, mask, causal))


class Block(nn.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    def __init__(self, attn: nn.Module, dim: int, hidden: int, eps: float):
        super().__init__()
        self.attn = attn
        self.ffn = FeedForward(dim, hidden)
        self.attn_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), **attn_kwargs)
        return h + self.ffn(self.ffn_norm(h))
