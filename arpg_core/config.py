"""Config dataclass helpers shared by every component (model, tokenizer, sampling)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from arpg_core.errors import ConfigError

C = TypeVar("C", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Base for component configs: named presets, dict/JSON round-trips."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_name(cls: type[C], name: str) -> C:
        if name not in cls.PRESETS:
            known = ", ".join(sorted(cls.PRESETS))
            raise ConfigError(f"unknown {cls.__name__} name {name!r}; known names: {known}")
        return cls(**cls.PRESETS[name])

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; fields are {sorted(names)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:  # missing required field
            raise ConfigError(f"cannot build {cls.__name__} from {data}: {exc}") from None

    @classmethod
    def resolve(cls: type[C], spec: str | dict[str, Any] | C) -> C:
        """Accept a preset name, a plain dict of field values, or an instance."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls.from_name(spec)
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        raise ConfigError(f"expected a {cls.__name__}, a preset name or a dict, got {type(spec).__name__}")

    @classmethod
    def from_spec(cls: type[C], spec: str) -> C:
        """A preset name, or the path of a JSON file of field values (command-line `--config`)."""
        if spec.endswith(".json"):
            path = Path(spec)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"config file {path} is not readable JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"config file {path} must hold a JSON object of field values")
            return cls.from_dict(data)
        return cls.from_name(spec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
