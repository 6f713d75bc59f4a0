"""Returns zeros at once: measures the daemon's own overhead. Option `delay_s` holds the device for a
fixed time per batch (a stand-in for work of known length in tests and scheduling studies)."""
from __future__ import annotations

import time

import numpy as np

from .base import Device


class NullDevice(Device):
    type = "null"

    def run(self, tasks):
        delay = float(self.options.get("delay_s", 0.0))
        if delay:
            time.sleep(delay)
        return super().run(tasks)

    def run_group(self, tasks):
        out: list[dict] = []
        for t in tasks:
            B = t.bindings
            if t.kind == "sample":
                nb = t.circuit.num_clbits or t.circuit.num_qubits
                out.append({"registers": {"meas": {"num_bits": nb, "array": np.zeros(
                    (B, t.shots or 1, (nb + 7) // 8), dtype=np.uint8)}}})
            elif t.kind == "estimate":
                z = np.zeros((B, len(t.observables)))
                out.append({"evs": z, "stds": z})
            else:
                out.append({"evs": np.zeros((B, len(t.observables))),
                            "jacobian": np.zeros((B, len(t.observables), t.params.shape[1]))})
        return out
