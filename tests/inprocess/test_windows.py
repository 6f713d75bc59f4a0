"""Maintenance windows (issue 10 item 3): planned with `qsched device maintenance --start --duration`
or in the config; a window that starts takes its device into maintenance, its end brings it back, a
resume ends it early, and a planned window survives a daemon restart."""
from __future__ import annotations

import asyncio
import time

import pytest
import yaml
from inprocess_harness import Api, daemon, embedded_redis, one_qubit, until

from qsched.config import parse_config
from qsched.errors import ConfigError


def slow(name: str) -> dict:
    return {"name": name, "type": "null", "pool": "p", "options": {"delay_s": 0.05}}


def test_a_window_takes_its_device_out_for_its_time_and_work_goes_to_the_other(tmp_path):
    async def body():
        async with daemon(tmp_path, [slow("a0"), slow("a1")]) as (d, api, _):
            admin = Api(d.config.admin_socket_path)
            # the session and its template first: in the window (2 s) only the submission and its three
            # batches, which a loaded machine could otherwise push past its end
            s = await api.session(pool="p")
            h = await api.template(s, one_qubit())
            now = time.time()
            status, w = await admin.call("POST", "/v1/admin/devices/a0/windows",
                                         {"start": now + 1.0, "end": now + 3.0, "reason": "calibration"})
            assert status == 201 and w["devices"] == ["a0"] and w["pool"] == "p"
            a0 = d.scheduler.devices["a0"]
            assert a0.state == "online"                                  # not yet
            await until(lambda: a0.state == "maintenance", timeout=5)
            assert a0.reason.startswith("maintenance window") and "calibration" in a0.reason
            _, out = await api.submit(s, h, 3)
            assert {t["meta"]["device"] for t in await api.wait(s, out["ids"])} == {"a1"}
            _, devices = await api.call("GET", "/v1/devices")
            assert [x["windows"] for x in devices["devices"] if x["name"] == "a0"][0][0]["reason"] == "calibration"
            await until(lambda: a0.state == "online", timeout=5)          # the window is over
            assert not d.scheduler.maintenance_windows
            status, err = await admin.call("POST", "/v1/admin/devices/a0/windows", {"start": now, "end": now - 5})
            assert status == 400 and err["error"]["field"] == "end"
            status, err = await admin.call("POST", "/v1/admin/devices/zz/windows", {"start": now})
            assert status == 404
            await admin.close()
    asyncio.run(body())


def test_a_resume_ends_the_window_and_a_planned_one_survives_a_restart(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as r:
            async with daemon(tmp_path, [slow("a0")], redis_url=r.url) as (d, _, _):
                admin = Api(d.config.admin_socket_path)
                now = time.time()
                await admin.call("POST", "/v1/admin/devices/a0/windows", {"start": now, "end": now + 600})
                a0 = d.scheduler.devices["a0"]
                assert a0.state == "maintenance"                          # on at once
                _, out = await admin.call("POST", "/v1/admin/devices/a0/state", {"state": "online"})
                assert out["state"] == "online"
                await asyncio.sleep(1.2)                                  # a few watch rounds
                assert a0.state == "online"                               # the window does not take it back
                await admin.call("POST", "/v1/admin/devices/a0/windows", {"start": now + 3600, "end": now + 7200,
                                                                          "reason": "tomorrow"})
                await admin.close()
            async with daemon(tmp_path / "2", [slow("a0")], redis_url=r.url) as (d2, _, _):
                assert [w.reason for w in d2.scheduler.maintenance_windows] == ["tomorrow"]
                assert d2.scheduler.devices["a0"].state == "online"
    asyncio.run(body())


def test_sighup_applies_the_configs_windows(tmp_path):
    """Issue 22 item 4: the config's windows were read only at start; a reload ignored them silently."""
    async def body():
        async with daemon(tmp_path, [slow("a0"), slow("a1")], workers=False) as (d, _, _):
            path = tmp_path / "qsched.yaml"
            d.config_path = str(path)
            now = time.time()
            path.write_text(yaml.safe_dump({**d.config.raw, "maintenance": [
                {"devices": ["a0"], "start": now - 1, "duration": "1h", "reason": "cooldown"},
                {"pool": "p", "start": now + 3600, "duration": "1h"}]}))
            assert await d.reload() is None
            a0, a1 = d.scheduler.devices["a0"], d.scheduler.devices["a1"]
            assert a0.state == "maintenance" and "cooldown" in a0.reason and a1.state == "online"
            assert len(d.scheduler.maintenance_windows) == 2
            path.write_text(yaml.safe_dump({**d.config.raw, "maintenance": []}))      # taken out again
            assert await d.reload() is None
            assert a0.state == "online" and not d.scheduler.maintenance_windows
    asyncio.run(body())


def test_config_windows_are_validated_naming_the_field():
    devices = [{"name": "a0", "type": "null", "pool": "p"}, {"name": "b0", "type": "null", "pool": "q"}]
    cfg = parse_config({"devices": devices, "maintenance": [
        {"pool": "p", "start": "2026-12-02T08:00:00Z", "duration": "4h", "reason": "calibration"},
        {"devices": ["b0"], "start": 1_800_000_000, "end": 1_800_003_600}]})
    first, second = cfg.maintenance
    assert (first.pool, first.end - first.start, first.devices) == ("p", 4 * 3600, ())
    assert (second.pool, second.devices) == ("q", ("b0",))
    for bad, field in (({"pool": "zz", "start": 0}, "maintenance[0].pool"),
                       ({"devices": ["nope"], "start": 0}, "maintenance[0].devices"),
                       ({"pool": "p"}, "maintenance[0].start"),
                       ({"pool": "p", "start": "tomorrow"}, "maintenance[0].start"),
                       ({"pool": "p", "start": 100, "end": 50}, "maintenance[0].end"),
                       ({"devices": ["a0", "b0"], "start": 0}, "maintenance[0].pool")):
        with pytest.raises(ConfigError) as e:
            parse_config({"devices": devices, "maintenance": [bad]})
        assert e.value.field == field, (bad, e.value)
