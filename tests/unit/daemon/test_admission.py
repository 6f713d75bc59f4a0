"""Admission driven by readiness (qsched/slurm/admission.py), pure: how many licences a pool holds back
from its predicted backlog, with hysteresis, the admin's bounds and maintenance first."""
from qsched.slurm import maintenance
from qsched.slurm.admission import Admission, Decision, decide, reservations

ON = Admission(enabled=True, target_s=60.0, hysteresis=0.25, min_free=1)


def _held(backlog_s, held_now=0, *, total=8, devices=2, reserved=0, cfg=ON):
    return decide("qpu", total=total, backlog_s=backlog_s, live_devices=devices, held_now=held_now,
                  reserved=reserved, cfg=cfg).held


def test_licences_are_held_back_as_the_backlog_passes_the_target_and_come_back_as_it_drains():
    assert _held(60) == 0                              # 30 s a device: within the target
    assert _held(2 * 150) == 4                         # 150 s a device: 8 x 75 / 150 free -> 4 held
    assert _held(2 * 600) == 7                         # far over: all but min_free
    assert _held(0, held_now=7) == 0                   # drained: everything back


def test_hysteresis_keeps_the_hold_near_the_target():
    # 70 s a device: over 60 but under 60 x 1.25: no hold starts
    assert _held(2 * 70) == 0
    # held 2 (from a larger backlog): 70 s a device is above 60 x 0.75, so the hold stays
    assert _held(2 * 70, held_now=2) == 2
    # 40 s a device: below 45: released
    assert _held(2 * 40, held_now=2) == 0


def test_bounds_and_maintenance_win():
    assert _held(2 * 600, cfg=Admission(enabled=True, max_held=3)) == 3
    assert _held(2 * 600, cfg=Admission(enabled=True, min_free=4)) == 4
    assert _held(2 * 600, reserved=4) == 3            # 4 reserved for a window: admission holds what is left
    d = decide("qpu", total=8, backlog_s=1e6, live_devices=2, held_now=5, reserved=8, cfg=ON)
    assert d.held == 0 and "maintenance" in d.reason
    assert _held(1e6, devices=0) == 0
    assert _held(1e6, cfg=Admission()) == 0          # off unless the admin turns it on


def test_the_reservation_goes_through_the_maintenance_plan():
    d = decide("qpu", total=8, backlog_s=2 * 150, live_devices=2, held_now=0, reserved=0, cfg=ON)
    assert "4 of 8 licences held back" in d.reason and "150 s" in d.reason
    want = reservations({"qpu": d, "sim": Decision("sim", 0, "")})
    assert list(want) == ["qsched_admit_qpu"] and dict(want["qsched_admit_qpu"].licenses) == {"qpu_qpu": 4}
    actions = maintenance.plan(want, {"qsched_admit_qpu": {"qpu_qpu": 2}, "qsched_admit_sim": {"qpu_sim": 1}})
    assert [(a.verb, a.reservation.name) for a in actions] == [("update", "qsched_admit_qpu"),
                                                                ("delete", "qsched_admit_sim")]


class _Slurm:
    """Slurm's reservations as scontrol leaves them (what the mirror reads back and changes)."""

    def __init__(self):
        self.held: dict[str, dict[str, int]] = {}
        self.calls: list[tuple[str, ...]] = []

    def reservations(self):
        return {k: dict(v) for k, v in self.held.items()}

    def scontrol(self, *args):
        self.calls.append(args)
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        name = kv.get("ReservationName") or kv.get("Reservation")
        if args[0] == "delete":
            self.held.pop(name, None)
        else:
            self.held[name] = {k: int(v) for k, v in (x.split(":") for x in kv["Licenses"].split(","))}
        return ""


def test_the_mirror_holds_back_licences_from_the_forecast_backlog_and_gives_them_back():
    import asyncio

    from daemon_fakes import FakeStore, scheduler

    from qsched.slurm.hooks import maintenance_mirror
    from qsched.slurm.site import Site

    sch = scheduler(FakeStore())
    for d in sch.devices.values():
        d.alive = True
    slurm = _Slurm()
    site = Site(pools={"p": 8}, classes=("batch",), default_pool="p", default_class="batch", max_qpu=4,
                slots_per_device=4)
    loop = maintenance_mirror(slurm, site, interval_s=0.01, recheck_s=0.0, admission=ON)

    async def rounds():
        task = asyncio.create_task(loop(sch))
        sch.views.backlog["p"] = 2 * 150.0               # 150 s of work a device
        await asyncio.sleep(0.1)
        held = dict(slurm.held)
        sch.devices["d0"].state = "maintenance"         # a device out: its licences are reserved first
        await asyncio.sleep(0.1)
        with_down = dict(slurm.held)
        sch.devices["d0"].state = "online"
        sch.views.backlog["p"] = 0.0                     # drained
        await asyncio.sleep(0.1)
        task.cancel()
        return held, with_down

    held, with_down = asyncio.run(rounds())
    assert held == {"qsched_admit_p": {"qpu_p": 4}}
    # one device of two: 300 s a device now, 4 licences down, admission holds what it may of the rest
    assert with_down == {"qsched_down_p": {"qpu_p": 4}, "qsched_admit_p": {"qpu_p": 3}}
    assert slurm.held == {}
