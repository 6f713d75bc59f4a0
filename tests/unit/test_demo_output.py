"""`make demo` piped to a file or a CI log: a few plain lines, not a frame of bars every 0.2 s."""
from __future__ import annotations

import threading
import time

from qsched import demo


def test_progress_off_a_terminal_is_a_few_plain_lines(capsys):
    progs = [demo.Progress(f"vqe-{i}") for i in range(demo.CLIENTS)]

    def work():
        for it in range(1, 11):
            time.sleep(0.15)
            for p in progs:
                p.done = it
                p.waits.append(0.001)
    worker = threading.Thread(target=work)
    t0 = time.perf_counter()
    worker.start()
    demo.follow(worker, progs, t0, tty=False, every_s=0.5)
    out = capsys.readouterr().out
    assert "\x1b[" not in out                               # no cursor movement
    assert out.count("[") == demo.CLIENTS                   # the bars once, at the end
    plain = [line for line in out.splitlines() if line.strip().endswith(f"/{demo.ITERATIONS}")
             and "[" not in line]
    assert 1 <= len(plain) <= 4, out                        # 1.5 s of work, a line every 0.5 s
    assert len(out.splitlines()) <= 4 + demo.CLIENTS + 1
