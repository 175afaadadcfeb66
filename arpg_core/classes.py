"""Classes grouped under coarser ones: a model trained with `train_arpg --subclasses` has a class for
each sub-folder (each emoji subgroup: `animal-mammal`, `food-fruit`, ...) and records the group each
belongs to (`model.class_groups`, one group name per class). Asking for a group means asking for one
of its classes; `group_label` picks it from the seed, so a run of seeds shows each in turn."""

from __future__ import annotations

from arpg_core.errors import SamplingError


def group_names(class_groups: list[str] | None) -> list[str]:
    """The groups in the order of their first class ([] for a model without groups)."""
    return list(dict.fromkeys(class_groups or []))


def group_members(class_groups: list[str] | None, group: int) -> list[int]:
    """The class indices of the group-th group."""
    names = group_names(class_groups)
    if not 0 <= group < len(names):
        raise SamplingError(f"group {group} does not exist; the model has {len(names)} class groups")
    return [k for k, g in enumerate(class_groups) if g == names[group]]


def group_label(class_groups: list[str] | None, group: int, seed: int) -> int:
    """The class that seed `seed` draws for the group-th group: its classes in turn, seed by seed."""
    members = group_members(class_groups, group)
    return members[int(seed) % len(members)]
