"""The confound map's settings: params.yaml's ``sensitivity`` section expanded into DVC experiments.

The reference setting is the params file with ``sensitivity.scale`` applied (the reduced scale the
whole grid runs at). Each level of each factor sets a few dotted params on top of the reference, one
factor at a time (no crossing: the grid costs one experiment per level, not the product). A level that
changes nothing is that factor's reference level and runs no experiment of its own. Every setting is
checked here as a whole params file, so a level of the wrong type or an unknown key is one line that
names the level and the key before anything runs. No torch: `audit.config` calls this to validate.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

REFERENCE = "reference"
PREFIX = "sens-"  # experiment names: sens-reference, sens-<factor>-<level>
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # safe as part of a git ref and a file name


def _bad_name(name: str) -> bool:
    # git refuses ".." anywhere, a trailing "." and ".lock" in a ref name
    return not _NAME.match(name) or ".." in name or name.endswith((".", ".lock"))


@dataclass(frozen=True)
class Setting:
    factor: str | None  # None for the reference
    level: str | None
    overrides: dict[str, Any]  # dotted params key -> value: the scale, then the level's
    params: Any = field(compare=False, repr=False)  # the setting's validated audit.config.Params

    @property
    def name(self) -> str:
        """The DVC experiment name."""
        return PREFIX + (REFERENCE if self.factor is None else f"{self.factor}-{self.level}")

    @property
    def label(self) -> str:
        return REFERENCE if self.factor is None else f"{self.factor}={self.level}"


def apply(raw: dict, overrides: dict[str, Any], where: str) -> dict:
    """A copy of the params dict ``raw`` with dotted ``overrides`` set; a key that is not there is an
    error naming it (an override never adds a knob, it can only change one)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node, parts = out, str(key).split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(map(str, node)) if isinstance(node, dict) else "(not a section)"
                raise ValueError(f"{where}: unknown params key {key!r} ({'.'.join(parts[:i + 1])!r} not in: {known})")
            if i == len(parts) - 1:
                if isinstance(value, dict) and value:
                    # DVC merges a mapping given with -S into the section, this would replace it:
                    # the two must not disagree, so only leaves (dotted keys) or {} are set.
                    raise ValueError(f"{where}: {key}: set its keys one by one ({key}.<name>: value), "
                                     f"not a mapping")
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
    return out


def settings(params) -> list[Setting]:
    """The reference first, then one setting per non-reference level, in the file's order.

    Raises ValueError("sensitivity.<where>: <what>") for a bad section (audit.config turns it into a
    one-line ConfigError naming the params file)."""
    from .config import ConfigError, params_from_dict, to_dict

    sens = params.sensitivity
    base = to_dict(params)
    base["sensitivity"] = {"scale": {}, "factors": {}}  # a setting carries no grid of its own
    if not sens.scale and not sens.factors:
        return [Setting(None, None, {}, params)]

    def build(overrides: dict, where: str):
        raw = apply(base, overrides, where)
        try:
            return params_from_dict(raw, source=where)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    reference = build(dict(sens.scale), "sensitivity.scale")
    reference_dict = to_dict(reference)
    out = [Setting(None, None, dict(sens.scale), reference)]
    seen: dict[str, str] = {}
    for factor, levels in sens.factors.items():
        where = f"sensitivity.factors.{factor}"
        if _bad_name(factor):
            raise ValueError(f"{where}: a factor name may hold letters, digits and _ . + - only")
        if not isinstance(levels, dict) or len(levels) < 2:
            raise ValueError(f"{where}: expected a mapping of at least two levels, got {levels!r}")
        kept = 0
        for level, over in levels.items():
            at = f"{where}.{level}"
            if _bad_name(level):
                raise ValueError(f"{at}: a level name may hold letters, digits and _ . + - only")
            if not isinstance(over, dict):
                raise ValueError(f"{at}: expected a mapping of dotted params keys to values, got {over!r}")
            overrides = {**sens.scale, **over}
            built = build(overrides, at)
            key = repr(sorted(flat(to_dict(built)).items()))
            if to_dict(built) == reference_dict:
                continue  # this factor's reference level: the reference experiment stands for it
            if key in seen:
                raise ValueError(f"{at}: the same setting as {seen[key]}")
            seen[key] = at
            setting = Setting(factor, level, overrides, built)
            clash = next((o for o in out if o.name == setting.name), None)
            if clash is not None:
                raise ValueError(f"{at}: its experiment name {setting.name} is that of {clash.label} too; rename one")
            out.append(setting)
            kept += 1
        if not kept:
            raise ValueError(f"{where}: every level equals the reference, so the factor varies nothing")
    return out


def flat(d: dict, prefix: str = "") -> dict:
    """A nested params dict as {dotted key: repr(value)}, for comparing two settings key by key."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat(v, key))
        else:
            out[key] = repr(v)
    return out
