"""Classes grouped under coarser ones: a model trained with `train_arpg --subclasses` has a class for
each sub-folder (each emoji subgroup: `animal-mammal`, `food-fruit`, ...) and records the group each
belongs to (`model.class_groups`, one group name per class) and how many training images each had
(`model.class_counts`). Asking for a group means asking for one of its classes, drawn by the seed
with the odds of the training images (equal odds without counts): the model's picture of the group
as a whole is that mixture of its classes, the one it was trained to draw and `eval_arpg` scores."""

from __future__ import annotations

import torch

from arpg_core.errors import SamplingError


def group_names(class_groups: list[str] | None) -> list[str]:
    """The groups in the order of their first class ([] for a model without groups)."""
    return list(dict.fromkeys(class_groups or []))


def group_index(class_groups: list[str]) -> list[int]:
    """Each class's group as an index into `group_names`."""
    names = group_names(class_groups)
    return [names.index(g) for g in class_groups]


def group_members(class_groups: list[str] | None, group: int) -> list[int]:
    """The class indices of the group-th group."""
    names = group_names(class_groups)
    if not 0 <= group < len(names):
        raise SamplingError(f"group {group} does not exist; the model has {len(names)} class groups")
    return [k for k, g in enumerate(class_groups) if g == names[group]]


def group_label(class_groups: list[str] | None, group: int, seed: int, class_counts: list[int] | None = None) -> int:
    """The class of the group-th group that `seed` draws, with odds ∝ `class_counts` (equal without)."""
    members = group_members(class_groups, group)
    odds = torch.tensor([float(class_counts[k]) if class_counts else 1.0 for k in members])
    if not odds.sum() > 0:
        odds = torch.ones(len(members))
    pick = torch.multinomial(odds, 1, generator=torch.Generator().manual_seed(int(seed) + 7919 * group))
    return members[int(pick)]
