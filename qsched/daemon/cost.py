"""The per-device cost model: estimated device-seconds per binding, by task kind."""
from __future__ import annotations


class CostModel:
    """Estimated device-seconds per binding, learned per device and task kind (EWMA of measurements),
    saved to Redis now and then so a restarted daemon starts with good estimates."""

    def __init__(self, alpha: float = 0.3, initial: float = 1e-3):
        self.alpha, self.initial = alpha, initial
        self.per_binding: dict[tuple[str, str], float] = {}
        self.dirty = False

    def estimate(self, device: str, kind: str, bindings: int) -> float:
        return self.per_binding.get((device, kind), self.initial) * bindings

    def observe(self, device: str, kind: str, bindings: int, seconds: float) -> None:
        if bindings <= 0:
            return
        k = (device, kind)
        x = seconds / bindings
        old = self.per_binding.get(k)
        self.per_binding[k] = x if old is None else (1 - self.alpha) * old + self.alpha * x
        self.dirty = True
