"""A config knob declared once: its name, default, bounds and doc. The parser reads it (errors name the
dotted field and the limit), the unknown-key checks list it, the dataclasses take their defaults from
it and docs/policy-reference.md's tables are generated from it (tests/unit/test_config_schema.py).
Policies declare their own options the same way (qsched.policy.Policy.OPTIONS)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    kind: str = "number"          # number | integer | bool | choice | text
    choices: tuple = ()

    def parse(self, value, path: str):
        """`value` as read from the section at `path` (None: absent, the default)."""
        where = f"{path}.{self.name}"
        if value is None:
            return self.default
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}", field=where)
            return value
        if self.kind == "choice":
            # `1 in (True,)` holds in Python: a number is not the choice true
            if not any(value is c or (type(value) is type(c) and value == c) for c in self.choices):
                raise ConfigError(f"{where}: expected one of {', '.join(map(_show, self.choices))}, got {value!r}",
                                  field=where)
            return value
        if self.kind == "text":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected text, got {value!r}", field=where)
            return value
        integer = self.kind == "integer"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}",
                              field=where)
        if self.lo is not None and value < self.lo:
            raise ConfigError(f"{where}: must be >= {self.lo}, got {value}", field=where, limit=self.lo)
        if self.hi is not None and value > self.hi:
            raise ConfigError(f"{where}: must be <= {self.hi}, got {value}", field=where, limit=self.hi)
        return value

    def allowed(self) -> str:
        """What the reference table says the option takes."""
        if self.kind == "bool":
            return "true, false"
        if self.kind == "choice":
            return ", ".join(map(_show, self.choices))
        if self.kind == "text":
            return "text"
        lo, hi = ("" if b is None else _show(b) for b in (self.lo, self.hi))
        what = "integer" if self.kind == "integer" else "number"
        return f"{what} {lo}..{hi}" if lo and hi else f"{what} >= {lo}" if lo else f"{what} <= {hi}" if hi else what


def _show(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def read_options(section: dict, options: Iterable[Option], path: str) -> dict[str, Any]:
    """Every option of `options` from `section` (defaults filled in), by name."""
    return {o.name: o.parse(section.get(o.name), path) for o in options}


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    return {o.name: o.default for o in options}


def reference_table(sections: Iterable[tuple[str, Iterable[Option]]]) -> str:
    """The markdown table of docs/policy-reference.md for these (section path, options)."""
    rows = ["| field | default | takes | meaning |", "|---|---|---|---|"]
    for path, options in sections:
        rows += [f"| `{path}.{o.name}` | {_show(o.default)} | {o.allowed()} | {o.doc} |" for o in options]
    return "\n".join(rows) + "\n"
