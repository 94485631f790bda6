"""The driver's progress: a bar per stage on a terminal; in a log file, a plain line per
interval (no carriage returns, no bar redraws) with each stage's count, rate and ETA."""

from __future__ import annotations

import io

from pipelines.annotate_progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_file_gets_one_plain_line_per_interval_per_stage_counts_rate_and_eta(capsys):
    clock = Clock()
    progress = Progress({"canny": 100, "hed": 50}, tty=False, interval=30, clock=clock)
    clock.now = 10
    progress.update({"canny": 40})
    assert capsys.readouterr().out == ""  # not yet an interval: nothing printed
    clock.now = 40
    progress.update({"canny": 80, "hed": 10})
    out = capsys.readouterr().out
    assert out == ("progress: canny 80/100 (2.0/s, ETA 10 s), "
                   "hed 10/50 (0.2/s, ETA 160 s)\n")
    clock.now = 50
    progress.update({"canny": 100, "hed": 50})
    progress.close()
    out = capsys.readouterr().out
    assert "\r" not in out and out.count("\n") == 1  # the final state, once, at the end
    assert "canny 100/100" in out and "hed 50/50" in out


def test_a_terminal_gets_a_bar_per_stage():
    screen = io.StringIO()
    progress = Progress({"canny": 100, "hed": 50}, tty=True, file=screen)
    progress.update({"canny": 40, "hed": 5})
    progress.update({"canny": 60, "hed": 50})
    progress.close()
    text = screen.getvalue()
    assert "canny" in text and "60/100" in text
    assert "hed" in text and "50/50" in text
    assert [b.n for b in progress.bars.values()] == [60, 50]
