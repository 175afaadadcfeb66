"""2D rotary position tables.

A table has one row per slot: row 0 is the class/condition slot and row p + 1 is grid position p
(row-major). Each row holds (cos, sin) for head_dim / 2 angles: row angles first, column angles
second, each angle rotating the adjacent pair (x[2k], x[2k + 1]).
"""

from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Per-axis frequencies: head_dim // 4 of them (half the angles go to rows, half to columns)."""
    half = head_dim // 2
    return 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.float64)[: half // 2] / half))


def rope_table_2d(
    grid_h: int,
    grid_w: int,
    head_dim: int,
    base: float = 10000.0,
    scale: tuple[float, float] = (1.0, 1.0),
    keep_bands: int = 2,
) -> torch.Tensor:
    """Table [1 + grid_h * grid_w, head_dim // 2, 2] of (cos, sin).

    `scale` > 1 squeezes positions back into the trained range for grids larger than the
    training grid (NTK-style, as RandAR does): the `keep_bands` fastest frequency bands keep the
    raw position, slower bands see position / scale.
    """
    freqs = rope_frequencies(head_dim, base)  # [hd/4]
    rows = torch.arange(grid_h, dtype=torch.float64)
    cols = torch.arange(grid_w, dtype=torch.float64)

    def axis_angles(pos: torch.Tensor, s: float) -> torch.Tensor:
        div = torch.ones_like(freqs)
        div[keep_bands:] = s
        return torch.outer(pos, freqs / div)  # [n, hd/4]

    row_ang = axis_angles(rows, scale[0])[:, None, :].expand(grid_h, grid_w, -1)
    col_ang = axis_angles(cols, scale[1])[None, :, :].expand(grid_h, grid_w, -1)
    angles = torch.cat([row_ang, col_ang], dim=-1).reshape(grid_h * grid_w, -1)  # [N, hd/2]
    table = torch.stack([angles.cos(), angles.sin()], dim=-1).float()
    # The condition slot is all zeros (cos = sin = 0), not the identity rotation: the published
    # checkpoints were trained that way, so the class token's rotated q and k are zero vectors.
    cond = torch.zeros(1, head_dim // 2, 2)
    return torch.cat([cond, table], dim=0)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x: [B, L, H, D]; rope: [B, L, D/2, 2] (gathered per row). Computed in float32."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, L, H, D/2, 2]
    cos = rope[:, :, None, :, 0]
    sin = rope[:, :, None, :, 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)
