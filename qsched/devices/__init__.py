"""Device registry: built-in types plus plugins from the `qsched.devices` entry point group."""
from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import ConfigError
from ..models import DeviceSpec
from .base import Device, TaskError, TaskPayload

_BUILTIN = {
    "aer": "qsched.devices.aer:AerDevice",
    "lightning": "qsched.devices.lightning:LightningDevice",
    "emulated-qpu": "qsched.devices.emulated:EmulatedQPUDevice",
    "null": "qsched.devices.null:NullDevice",
    "qrmi": "qsched.devices.qrmi:QrmiDevice",
}


def device_types() -> dict[str, str]:
    types = dict(_BUILTIN)
    for ep in entry_points(group="qsched.devices"):
        types.setdefault(ep.name, ep.value)
    return types


def load_device(spec: DeviceSpec) -> Device:
    target = device_types().get(spec.type)
    if target is None:
        raise ConfigError(f"device {spec.name}: unknown type {spec.type!r}", field="devices.type")
    module, _, attr = target.partition(":")
    import importlib
    cls = getattr(importlib.import_module(module), attr)
    if spec.credentials_file:      # read here, in the worker: the daemon never reads it
        from ..credentials import load
        return cls(spec, credentials=load(spec.credentials_file, f"device {spec.name}: credentials_file"))
    return cls(spec)


__all__ = ["Device", "TaskPayload", "TaskError", "load_device", "device_types"]
