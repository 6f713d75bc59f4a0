"""PennyLane on qsched: ``qml.device("qsched.qubit", wires=..., pool=...)`` (entry point
``pennylane.plugins``), with server-side adjoint gradients and batched parameter shift."""
from .device import QschedDevice
from .errors import QschedDeviceError

__all__ = ["QschedDevice", "QschedDeviceError"]
