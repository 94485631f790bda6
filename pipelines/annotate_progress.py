"""What annotate shows while it works: a tqdm bar per stage on a terminal, a plain line
every `interval` seconds in a log; one line per joined sidecar."""

from __future__ import annotations

import sys
import time
from collections import Counter

from annotators.base import FAILED, OK, SKIPPED


class Progress:
    """Samples done per stage: on a terminal a tqdm bar per stage (count/total, rate, ETA);
    in a log file a plain line every `interval` seconds and one at the end, no bar redraws."""

    def __init__(self, totals: dict[str, int], tty: bool, interval: float = 30.0,
                 file=None, clock=time.perf_counter):
        self.totals, self.done = totals, Counter()
        self.interval, self.clock, self.file = interval, clock, file
        self.start = self.last = clock()
        self.unprinted = False
        self.bars = {}
        if tty:
            from tqdm import tqdm

            width = max(map(len, totals), default=0)
            self.bars = {stage: tqdm(total=total, unit="sample", desc=stage.ljust(width),
                                     position=i, file=file or sys.stderr)
                         for i, (stage, total) in enumerate(totals.items())}

    def update(self, done: dict[str, int]) -> None:
        if dict(done) == dict(self.done):
            return
        for stage, bar in self.bars.items():
            bar.update(done.get(stage, 0) - self.done[stage])
        self.done = Counter(done)
        self.unprinted = True
        if not self.bars and self.clock() - self.last >= self.interval:
            self._print()

    def _print(self) -> None:
        self.last = self.clock()
        self.unprinted = False
        print(self.line(), file=self.file or sys.stdout, flush=True)

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        parts = []
        for stage, total in self.totals.items():
            done = self.done[stage]
            rate = done / elapsed
            eta = (total - done) / rate if rate > 0 else float("inf")
            parts.append(f"{stage} {done}/{total} ({rate:.1f}/s, ETA {eta:.0f} s)")
        return "progress: " + ", ".join(parts)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if not self.bars and self.unprinted:
            self._print()


def summary_line(stats: dict) -> str:
    return (f"shard {stats['shard']:06d} {stats['stage']}: ok {stats[OK]} skipped "
            f"{stats[SKIPPED]} failed {stats[FAILED]} of {stats['samples']} "
            f"({stats['seconds']:.1f} worker-s, {stats['images_per_s']:.0f} img/s)")

