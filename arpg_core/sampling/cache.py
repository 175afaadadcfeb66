"""Preallocated KV caches for decoding, written in place by index."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """One attention layer's keys and values: [B, H, max_len, D], allocated once."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [B, H, n, D] go to slots start..start+n; returns views of slots 0..start+n."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_len} slots")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass
class DecodeCache:
    """Everything one decoding call holds: pass-1 caches, the shared K/V, the rotary table."""

    content: list[KVCache]  # one per pass-1 (self-attention) layer
    shared: KVCache  # the single K/V pair every pass-2 layer reads
    rope: torch.Tensor  # [1 + grid_h * grid_w, head_dim / 2, 2]
    length: int = 0  # content tokens written so far (class token included)

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.content) + self.shared.nbytes()
