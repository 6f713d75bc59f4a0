"""Timing profiles for the emulated QPU, by name, from published figures (docs/admin-guide.md cites
each source). A shot takes rep_s + its circuit's gates (gate_1q_s, gate_2q_s each) + readout_s; a batch
adds setup_s (a cloud QPU's per-job overhead). Explicit device options override a profile's fields.
No qiskit import here: the config checks profile names with it."""
from __future__ import annotations

FIELDS = ("setup_s", "rep_s", "gate_1q_s", "gate_2q_s", "readout_s")

PROFILES: dict[str, dict[str, float]] = {
    # IBM (superconducting, Eagle/Heron): shots are bounded by the repetition delay between circuits
    # (default_rep_delay, 250 us on current backends); gates (~50-600 ns) are negligible next to it. A
    # job carries seconds of fixed overhead (IBM: "combine jobs that use less than a minute of QPU
    # time"); 2 s is the issue's figure for it.
    "ibm-heron": {"setup_s": 2.0, "rep_s": 250e-6, "gate_1q_s": 0.0, "gate_2q_s": 0.0, "readout_s": 0.0},
    # IonQ Aria (trapped ions): gate times 135 us (one qubit) and 600 us (two qubits), so a shot's
    # time grows with the circuit; readout and reset are of the order of 300 us
    "ionq-aria": {"setup_s": 1.0, "rep_s": 0.0, "gate_1q_s": 135e-6, "gate_2q_s": 600e-6, "readout_s": 300e-6},
    # AQT (trapped ions, PINE/IBEX): about 5.5 shots per second at the system level
    "aqt-pine": {"setup_s": 1.0, "rep_s": 1 / 5.5, "gate_1q_s": 0.0, "gate_2q_s": 0.0, "readout_s": 0.0},
}


DEFAULT_TIMING = {"setup_s": 0.05, "rep_s": 100e-6, "gate_1q_s": 0.0, "gate_2q_s": 0.0, "readout_s": 0.0}


def timing(options: dict) -> dict[str, float]:
    """An emulated device's timing: the defaults, its profile's fields, then its own options."""
    out = dict(DEFAULT_TIMING)
    if options.get("profile"):
        out.update(profile(str(options["profile"])))
    out.update({k: float(options[k]) for k in FIELDS if k in options})
    return out


def cost_prior(options: dict) -> dict[str, float]:
    """What the daemon's cost model assumes of an emulated device until it has measured it (a gate-less
    shot: the gates' time depends on the circuit, learned with the rest)."""
    t = timing(options)
    return {"setup_s": t["setup_s"], "per_shot_s": t["rep_s"] + t["readout_s"],
            "shots": float(options.get("default_shots", 1000))}


def profile(name: str, field: str = "options.profile") -> dict[str, float]:
    from ..errors import ConfigError
    if name not in PROFILES:
        raise ConfigError(f"{field}: unknown timing profile {name!r} (known: {', '.join(sorted(PROFILES))})",
                          field=field)
    return dict(PROFILES[name])
