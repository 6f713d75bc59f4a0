"""The client's retry policy (pure) and the core's execution of operations through an outage, driven
by a scripted fake daemon and a fake clock: no sockets, no sleeping."""
from __future__ import annotations

import logging

import pytest

from qsched import errors
from qsched.client import core
from qsched.client.core import Call, ClientCore, FutureCore, SessionCore, Sleep
from qsched.client.retry import Backoff, RetryPolicy, Unreachable, retry_reason

# ------------------------------------------------------------------------------------------- policy


def test_backoff_ceiling_doubles_then_caps():
    p = RetryPolicy(total_s=300, base_s=0.05, cap_s=5.0)
    assert [p.ceiling(n) for n in range(4)] == [0.05, 0.1, 0.2, 0.4]
    assert p.ceiling(7) == 5.0 and p.ceiling(10_000) == 5.0          # capped, and no float overflow


def test_full_jitter_stays_within_zero_and_the_ceiling():
    p = RetryPolicy()
    for n in range(12):
        assert p.delay(n, 0.0) == 0.0
        assert p.delay(n, 0.999999) <= p.ceiling(n)
        assert p.delay(n, 0.5) == pytest.approx(p.ceiling(n) / 2)


def test_total_time_limit_bounds_the_sum_of_sleeps():
    p = RetryPolicy(total_s=20, base_s=0.05, cap_s=5.0)
    b = Backoff(p, start=100.0)
    now, sleeps = 100.0, []
    while (d := b.next_delay(now, 0.999)) is not None:
        sleeps.append(d)
        now += d + 0.01                      # each attempt itself takes a little time
    assert sum(sleeps) <= 20 and now - 100.0 >= 20
    assert max(sleeps) <= 5.0
    assert b.next_delay(now, 0.5) is None    # spent: give up


def test_last_sleep_is_cut_to_the_time_left():
    b = Backoff(RetryPolicy(total_s=1.0, base_s=10, cap_s=10), start=0.0)
    assert b.next_delay(0.7, 0.9) == pytest.approx(0.3)


def test_policy_from_env():
    assert RetryPolicy.from_env({}).total_s == 300.0
    assert RetryPolicy.from_env({"QSCHED_RETRY_S": "12.5"}).total_s == 12.5
    assert RetryPolicy.from_env({}).first_contact().total_s == 10.0
    assert RetryPolicy.from_env({"QSCHED_RETRY_S": "4", "QSCHED_CONNECT_S": "30"}).first_contact().total_s == 4
    assert not RetryPolicy.from_env({"QSCHED_RETRY_S": "0"}).enabled
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(errors.ConfigError) as e:
            RetryPolicy.from_env({"QSCHED_RETRY_S": bad})
        assert e.value.field == "QSCHED_RETRY_S"


def _http(status, code, message="m"):
    return errors.from_json(status, {"error": {"code": code, "message": message}})


@pytest.mark.parametrize("err,reason", [
    (_http(503, "draining", "daemon is draining; retry on the next daemon"), "draining"),
    (_http(409, "conflict", "daemon is draining; no new tasks"), "draining"),      # older daemons
    (_http(503, "unavailable", "store: Redis is unavailable"), "unavailable"),
    (Unreachable("x", cause="socket missing", sent=False), "socket missing"),
    (Unreachable("x", cause="connection refused", sent=False), "connection refused"),
    (Unreachable("x", cause="connection reset", sent=True), "connection reset"),
])
def test_retriable_errors(err, reason):
    assert retry_reason(err) == reason


@pytest.mark.parametrize("err", [
    _http(400, "bad_request"), _http(401, "unauthorized"), _http(403, "forbidden"), _http(404, "not_found"),
    _http(413, "payload_too_large"), _http(409, "conflict", "task already finished"), _http(500, "internal"),
    errors.TaskFailed("boom"), errors.Timeout("late"), ValueError("not ours"),
])
def test_final_errors(err):
    assert retry_reason(err) is None


def test_a_request_that_may_have_arrived_is_resent_only_when_safe():
    sent = Unreachable("x", cause="connection reset", sent=True)
    unsent = Unreachable("x", cause="connection refused", sent=False)
    assert retry_reason(sent, idempotent=False) is None
    assert retry_reason(unsent, idempotent=False) == "connection refused"
    assert retry_reason(_http(503, "draining"), idempotent=False) == "draining"     # refused: nothing taken


# ------------------------------------------------------------------------------------------- core
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeCore(ClientCore):
    _session_cls = SessionCore


SessionCore._future_cls = FutureCore


class Daemon:
    """Answers each Send with the next scripted reply (a value, an exception, or a function of the
    Send); records what was sent and slept."""

    def __init__(self, *script, retry_s=60.0, rand=0.5):
        self.script = list(script)
        self.sent, self.slept = [], []
        self.clock = Clock()
        self.core = FakeCore("unix:///fake.sock", retry_s=retry_s, identity=lambda purpose: {"X-Id": "me"},
                             clock=self.clock, rand=lambda: rand)

    def run(self, op):
        run = self.core.execute(op)
        reply, error = None, None
        while True:
            try:
                effect = run.throw(error) if error is not None else run.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if isinstance(effect, Sleep):
                self.slept.append(effect.seconds)
                self.clock.t += effect.seconds
                continue
            self.sent.append(effect)
            self.clock.t += 0.001
            step = self.script.pop(0)
            if callable(step) and not isinstance(step, BaseException):
                step = step(effect)
            if isinstance(step, BaseException):
                error = step
            else:
                reply = step


DRAINING = _http(503, "draining", "daemon is draining; no new tasks (retry on the next daemon)")


def gone():
    return Unreachable("qsched daemon: no such file", cause="socket missing", sent=False)


def reset():
    return Unreachable("qsched daemon: reset", cause="connection reset", sent=True)


def _session(d, token="tok"):
    return SessionCore(d.core, {"id": "s1", "token": token, "pool": "null"})


def _submit(session):
    return session._op_post_tasks([{"kind": "estimate", "template": "ab" * 32, "params": [[0.0]],
                                    "observables": ["Z"]}])


def test_a_submit_rides_through_a_restart_with_one_key(caplog):
    d = Daemon(DRAINING, DRAINING, gone(), reset(), {"ids": ["s1.a"]})
    s = _session(d)
    with caplog.at_level(logging.INFO, logger="qsched.client"):
        assert d.run(_submit(s)) == {"ids": ["s1.a"]}
    keys = {e.body["idempotency_key"] for e in d.sent}
    assert len(d.sent) == 5 and len(keys) == 1 and 1 <= len(keys.pop()) <= 128
    assert all(e.headers["Authorization"] == "Bearer tok" for e in d.sent)
    # capped exponential, full jitter at u=0.5: half of 0.05, 0.1, 0.2, 0.4
    assert d.slept == pytest.approx([0.025, 0.05, 0.1, 0.2])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2, msgs                                   # once per outage, not per attempt
    assert "draining" in msgs[0] and "retrying for up to 60 s" in msgs[0] and "back after" in msgs[1]


def test_every_logical_submit_has_its_own_key():
    d = Daemon({"ids": ["s1.a"]}, {"ids": ["s1.b"]})
    s = _session(d)
    d.run(_submit(s))
    d.run(_submit(s))
    assert d.sent[0].body["idempotency_key"] != d.sent[1].body["idempotency_key"]


def test_gives_up_after_the_time_limit_with_the_last_error(caplog):
    d = Daemon({"status": "ok"}, *[gone() for _ in range(1000)], retry_s=20.0, rand=0.999)
    d.run(d.core._op_health())                       # the daemon answered once, then went away
    start = d.clock.t
    with caplog.at_level(logging.INFO, logger="qsched.client"), pytest.raises(Unreachable):
        d.run(d.core._op_health())
    assert sum(d.slept) <= 20.0 and d.clock.t - start >= 20.0
    assert max(d.slept) <= 5.0
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]      # retrying; giving up


def test_a_daemon_never_reached_is_reported_at_once_and_waited_for_briefly(caplog):
    """No daemon behind the address (QSCHED_URL wrong or unset, nothing started): a WARNING on the
    first failed try that says where it looked and what to do, and QSCHED_CONNECT_S (10 s), not the
    300 s outage budget, before the error, which says the same."""
    d = Daemon(*[gone() for _ in range(1000)], retry_s=300.0, rand=0.999)
    with caplog.at_level(logging.INFO, logger="qsched.client"), pytest.raises(Unreachable) as info:
        d.run(d.core._op_health())
    assert 9.0 <= d.clock.t - 1000.0 <= 10.5
    first = caplog.records[0]
    assert first.levelname == "WARNING" and len(d.sent) > 1 and caplog.records == caplog.records[:1]
    for text in (first.getMessage(), str(info.value)):
        assert "unix:///fake.sock" in text and "QSCHED_URL" in text and "qsched up" in text
    assert info.value.cause == "socket missing"


def test_the_first_contact_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("QSCHED_CONNECT_S", "2")
    d = Daemon(*[gone() for _ in range(1000)], retry_s=None, rand=0.999)
    with pytest.raises(Unreachable):
        d.run(d.core._op_health())
    assert 1.5 <= d.clock.t - 1000.0 <= 2.5
    monkeypatch.setenv("QSCHED_CONNECT_S", "soon")
    with pytest.raises(errors.ConfigError, match="QSCHED_CONNECT_S"):
        RetryPolicy.from_env()


def test_a_daemon_that_answered_even_with_an_error_gets_the_long_budget():
    """A draining daemon (503) was reached: its restart is an outage, ridden through for retry_s."""
    d = Daemon(DRAINING, *[gone() for _ in range(1000)], retry_s=60.0, rand=0.999)
    with pytest.raises(Unreachable):
        d.run(d.core._op_health())
    assert d.clock.t - 1000.0 >= 60.0


def test_zero_disables_retries():
    d = Daemon(DRAINING, retry_s=0)
    with pytest.raises(errors.Draining):
        d.run(_submit(_session(d)))
    assert len(d.sent) == 1 and d.slept == []


def test_retry_s_from_the_environment(monkeypatch):
    monkeypatch.setenv("QSCHED_RETRY_S", "0")
    d = Daemon(DRAINING, retry_s=None)
    with pytest.raises(errors.Draining):
        d.run(d.core._op_queue())
    assert len(d.sent) == 1


@pytest.mark.parametrize("status,code", [(400, "bad_request"), (403, "forbidden"), (404, "not_found"),
                                         (413, "payload_too_large")])
def test_fatal_statuses_are_raised_at_once(status, code):
    d = Daemon(_http(status, code))
    with pytest.raises(errors.QschedError) as e:
        d.run(d.core._op_devices())
    assert e.value.status == status and len(d.sent) == 1 and d.slept == []


def test_open_session_is_not_sent_twice_when_it_may_have_arrived():
    d = Daemon(reset())
    with pytest.raises(Unreachable):
        d.run(d.core._op_open_session("null"))
    assert len(d.sent) == 1
    d = Daemon(gone(), DRAINING, {"id": "s9", "token": "t", "pool": "null"})
    s = d.run(d.core._op_open_session("null"))
    assert s.id == "s9" and len(d.sent) == 3 and d.sent[0].headers == {"X-Id": "me"}


def test_a_cut_long_poll_is_reissued_with_the_time_left():
    def answer(e):
        return {"tasks": [{"id": "s1.a", "state": "DONE", "result": {}}]}
    d = Daemon(reset(), gone(), answer)
    s = _session(d)
    fut = FutureCore(s, "s1.a")
    d.clock.t = 1000.0
    res = d.run(s._op_wait([fut], timeout=10.0))
    assert res[0].id == "s1.a"
    timeouts = [e.body["timeout"] for e in d.sent]
    assert timeouts[0] == pytest.approx(10.0) and timeouts[1] < timeouts[0] and timeouts[2] < timeouts[1]
    assert all(e.path == "/v1/tasks/wait" for e in d.sent)


def test_a_wait_past_its_deadline_during_an_outage_times_out():
    d = Daemon(*[gone() for _ in range(50)], {"tasks": [{"id": "s1.a", "state": "PENDING"}]})
    s = _session(d)
    with pytest.raises(errors.Timeout) as e:
        d.run(s._op_wait([FutureCore(s, "s1.a")], timeout=1.0))
    assert "socket missing" in e.value.message
    assert d.clock.t - 1000.0 < 2.0 and len(d.sent) < 10      # the caller's 1 s, not QSCHED_RETRY_S
    assert d.sent[-1].body["timeout"] < 0.2                    # each re-issued poll asked for the time left


def test_a_refused_token_reattaches_once_and_retries_with_the_new_one():
    d = Daemon(_http(403, "forbidden"), {"id": "s1", "token": "new"}, {"id": "s1", "state": "open"})
    s = _session(d, token="old")
    assert d.run(s._op_status())["state"] == "open"
    assert [e.path for e in d.sent] == ["/v1/sessions/s1", "/v1/sessions/s1/attach", "/v1/sessions/s1"]
    assert d.sent[1].headers == {"X-Id": "me"}                        # attach proves identity afresh
    assert d.sent[2].headers["Authorization"] == "Bearer new" and s.token == "new"


def test_a_refused_reattach_raises_the_original_refusal():
    refused = _http(401, "unauthorized", "token refused")
    d = Daemon(refused, _http(403, "forbidden", "not yours"))
    s = _session(d)
    with pytest.raises(errors.Unauthorized) as e:
        d.run(s._op_status())
    assert e.value is refused and len(d.sent) == 2


def test_no_reattach_without_a_token():
    d = Daemon(_http(403, "forbidden"))
    with pytest.raises(errors.Forbidden):
        d.run(_session(d, token=None)._op_status())
    assert len(d.sent) == 1


def test_an_expired_template_is_uploaded_again_under_the_same_key(monkeypatch):
    monkeypatch.setattr(core.wire, "dump_qpy", lambda c: b"qpy-bytes")
    expired = errors.NotFound("tasks[0].template: unknown or expired template", field="tasks[0].template")
    d = Daemon({"hash": "h"}, expired, {"hash": "h"}, {"ids": ["s1.a"]})
    s = _session(d)
    out = d.run(s._op_post_tasks([{"kind": "estimate", "circuit": object(), "params": [[0.0]], "observables": ["Z"]}]))
    assert out == {"ids": ["s1.a"]}
    paths = [e.path for e in d.sent]
    assert paths == ["/v1/sessions/s1/templates", "/v1/sessions/s1/tasks"] * 2
    assert d.sent[1].body["idempotency_key"] == d.sent[3].body["idempotency_key"]


def test_call_defaults_are_safe_to_repeat():
    c = Call("GET", "/v1/health")
    assert c.idempotent and c.session is None and c.rebuild is None


def test_a_close_may_bring_its_own_short_budget():
    d = Daemon(*[gone() for _ in range(100)], retry_s=300.0)
    s = _session(d)
    with pytest.raises(Unreachable):
        d.run(s._op_close(retry_s=2.0))
    assert sum(d.slept) <= 2.0 and not s.closed
