"""The ARPG training objective: teacher forcing over a fresh random order per sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arpg_core.models.arpg import ARPG


def init_arpg_weights(model: ARPG, std: float = 0.02) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
    nn.init.zeros_(model.head.weight)  # start from uniform predictions


def random_orders(batch: int, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    return torch.argsort(torch.rand(batch, n, generator=generator), dim=1).to(device)


def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace labels by the null class (-1) with probability p, for classifier-free guidance."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return labels.masked_fill(drop.to(labels.device), -1)


def arpg_loss(model: ARPG, tokens: torch.Tensor, labels: torch.Tensor, *, class_dropout: float = 0.1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of a random permutation."""
    order = random_orders(*tokens.shape, generator=generator, device=tokens.device)
    logits = model(tokens, drop_labels(labels, class_dropout, generator), order)  # [B, N, V]
    return F.cross_entropy(logits.flatten(0, 1), tokens.gather(1, order).flatten())


@torch.no_grad()
def heldout_loss(model: ARPG, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int = 64,
                 seed: int = 0) -> float:
    """Conditional loss on held-out codes over fixed random orders (comparable between evals)."""
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        t, y = tokens[i:i + batch_size], labels[i:i + batch_size]
        loss = arpg_loss(model, t, y, class_dropout=0.0, generator=g)
        total += float(loss) * len(t)
        count += len(t)
    return total / max(1, count)


def unigram_loss(train_tokens: torch.Tensor, eval_tokens: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy of eval codes under the training codes' unigram frequencies (add-one)."""
    counts = torch.bincount(train_tokens.flatten(), minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[eval_tokens.flatten()].mean())
