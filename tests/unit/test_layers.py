"""The layers of docs/architecture.md, written down as a test: which of qsched's own packages may import
which. Every import counts, lazy ones inside functions too (a lazy import is still a dependency, only a
later one). What a compute node may import from third parties is tests/unit/test_light_imports.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "qsched"

# layer -> what it must never import (qsched packages or modules, and third-party top-level packages)
FORBIDDEN: dict[str, set[str]] = {
    # pure scheduling: no I/O, no daemon, no store
    "qsched.policy": {"qsched.store", "qsched.daemon", "qsched.worker", "qsched.config", "redis"},
    # a device runs in a worker and talks to nothing but its simulator or vendor
    "qsched.devices": {"qsched.daemon", "qsched.store", "qsched.worker"},
    # the client runs on compute nodes: no daemon config, no daemon, no store
    "qsched.client": {"qsched.config", "qsched.daemon", "qsched.store", "qsched.worker", "redis"},
    # the daemon never runs a device in its own process
    "qsched.daemon": {"qsched.worker", "qsched.devices"},
    # the two SDKs stand side by side over the client and qsched.sdk
    "qsched.qiskit": {"qsched.pennylane", "qsched.devices", "qsched.daemon", "qsched.store", "qsched.config"},
    "qsched.pennylane": {"qsched.qiskit", "qsched.devices", "qsched.daemon", "qsched.store", "qsched.config"},
    # what both SDKs share imports neither framework
    "qsched.sdk": {"qiskit", "pennylane", "qsched.qiskit", "qsched.pennylane", "qsched.daemon"},
    # the wire format is shared by everyone and depends on no one above it
    "qsched.wire": {"qsched.daemon", "qsched.store", "qsched.devices", "qsched.client", "qsched.config"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, mod: str, is_package: bool = False) -> set[str]:
    """Absolute names of everything module `mod` imports, at any depth of its code."""
    package = mod if is_package else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from . import x` may name a module: count both the package and package.x
            out.add(prefix)
            out.update(f"{prefix}.{a.name}" for a in node.names)
    return out


def _under(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def test_the_contract_names_real_packages():
    for layer, banned in FORBIDDEN.items():
        assert any(_under(m, layer) for m in MODULES), layer
        for b in banned:
            if b.startswith("qsched."):
                assert any(_under(m, b) for m in MODULES), b


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_it_must_not(layer):
    crossings = []
    for mod, path in sorted(MODULES.items()):
        if not _under(mod, layer):
            continue
        for name in sorted(_imports(path.read_text(), mod, path.name == "__init__.py")):
            for banned in FORBIDDEN[layer]:
                if _under(name, banned) or name.split(".")[0] == banned:
                    crossings.append(f"{mod} imports {name} ({layer} must not import {banned})")
    assert not crossings, "\n".join(crossings)


def test_the_scanner_sees_lazy_and_relative_imports():
    # the test above is only as good as its scanner: a crossing hidden in a function must show
    src = "from . import wire\nfrom ..x import y\ndef f():\n    from ..daemon.app import Daemon\n    import redis\n"
    names = _imports(src, "qsched.client.core")
    assert {"qsched.client.wire", "qsched.x.y", "qsched.daemon.app", "redis"} <= names
    assert "qsched.daemon.app.Daemon" in names
    assert "qsched.policy.base" in _imports("from .base import Policy\n", "qsched.policy", is_package=True)
