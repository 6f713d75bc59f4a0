"""The per-device cost model: estimated device-seconds per binding, by task kind."""
from __future__ import annotations


class CostModel:
    """Estimated device-seconds per binding, learned per device and task kind (EWMA of measurements),
    saved to Redis now and then so a restarted daemon starts with good estimates.

    A device's `cost_prior` (an emulated QPU without one: its timing profile, config.py) seeds it until
    measurements arrive: `setup_s`, a fixed cost per batch (a cloud QPU's per-job overhead), and
    `per_binding_s` (or `per_shot_s` x `shots`, default 1000 shots). The setup part is also subtracted
    from what is measured, so only the per-binding part is learned."""

    def __init__(self, alpha: float = 0.3, initial: float = 1e-3):
        self.alpha, self.initial = alpha, initial
        self.per_binding: dict[tuple[str, str], float] = {}
        self.setup: dict[str, float] = {}
        self.prior: dict[str, float] = {}
        self.dirty = False

    def seed(self, devices) -> None:
        for d in devices:
            p = d.cost_prior or {}
            if "setup_s" in p:
                self.setup[d.name] = float(p["setup_s"])
            if "per_binding_s" in p:
                self.prior[d.name] = float(p["per_binding_s"])
            elif "per_shot_s" in p:
                self.prior[d.name] = float(p["per_shot_s"]) * float(p.get("shots") or 1000)

    def marginal(self, device: str, kind: str, bindings: int) -> float:
        """What `bindings` more cost on the device, without its per-batch setup (merging bounds)."""
        return self.per_binding.get((device, kind), self.prior.get(device, self.initial)) * bindings

    def estimate(self, device: str, kind: str, bindings: int) -> float:
        return self.setup.get(device, 0.0) + self.marginal(device, kind, bindings)

    def observe(self, device: str, kind: str, bindings: int, seconds: float) -> None:
        if bindings <= 0:
            return
        k = (device, kind)
        x = max(0.0, seconds - self.setup.get(device, 0.0)) / bindings
        old = self.per_binding.get(k)
        self.per_binding[k] = x if old is None else (1 - self.alpha) * old + self.alpha * x
        self.dirty = True
