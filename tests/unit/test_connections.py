"""Connection admission and the accept-error log (qsched/daemon/connections.py)."""
import asyncio
import logging

from qsched.daemon.connections import AcceptErrorLog, ConnectionLimiter


def test_caps_per_peer_and_in_all():
    lim = ConnectionLimiter(per_peer=2, total=3)
    assert lim.admit("uid:1") is None and lim.admit("uid:1") is None
    assert lim.admit("uid:1") == ("daemon.max_connections_per_peer", 2)
    assert lim.admit("uid:2") is None
    assert lim.admit("uid:3") == ("daemon.max_connections", 3)      # the total is reached first
    lim.release("uid:1")
    assert lim.admit("uid:3") is None and dict(lim.open) == {"uid:1": 1, "uid:2": 1, "uid:3": 1}


def test_refusals_are_counted_each_and_logged_once_per_interval(caplog):
    lim = ConnectionLimiter(per_peer=1, total=10, log_interval_s=60)
    seen = []
    lim.on_refuse = seen.append
    with caplog.at_level(logging.WARNING, "qsched.daemon"):
        for _ in range(100):
            lim.refused_one("uid:7", "daemon.max_connections_per_peer", 1)
    assert seen == ["max_connections_per_peer"] * 100 and lim.refused == 100
    assert len([r for r in caplog.records if "uid:7" in r.getMessage()]) == 1


def test_accept_errors_are_logged_once_per_interval_with_a_count(caplog):
    loop = asyncio.new_event_loop()
    handler = AcceptErrorLog(interval_s=60)
    ctx = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
    with caplog.at_level(logging.ERROR):
        for _ in range(7_500):                        # what one second of EMFILE retries logged before
            handler(loop, ctx)
        other = {"message": "something else went wrong"}
        handler(loop, other)                          # anything else goes to asyncio's own handler
    accept = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(accept) == 1 and handler.suppressed == 7_499
    assert any("something else" in r.getMessage() for r in caplog.records)
    loop.close()
