"""Milliseconds per 512² image for each of the 32 degradations, on one core.

    python benchmarks/bench_degradations.py [--runs 9] [--size 512] [--budget-ms 30]

Prints `<name>_ms: <median>` per degradation (median over runs with different seeds, so
that severity families are timed across their sub-types), then the slowest sub-type of
each severity family, then `over_30ms: [...]` and `max_ms: ...` last.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import skimage.data

from graph200k.degradations import DEGRADATION_FUNCS, SEVERITY_FAMILIES


def _median_ms(func, runs: int) -> float:
    times = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        func(rng)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budget-ms", type=float, default=30.0)
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)  # one core per image, as in a Ray Data worker
    image = cv2.resize(skimage.data.astronaut(), (args.size, args.size),
                       interpolation=cv2.INTER_AREA)
    for func in DEGRADATION_FUNCS.values():  # warm up lazy imports and codec setup
        func(image, np.random.default_rng(0))

    results = {}
    for name, func in DEGRADATION_FUNCS.items():
        results[name] = _median_ms(lambda rng: func(image, rng), args.runs)
        print(f"{name}_ms: {results[name]:.1f}", flush=True)

    # A family's median hides a slow sub-type: time each at its heaviest severity.
    for family_name, family in SEVERITY_FAMILIES.items():
        for subtype, (sub, table) in family.subtypes.items():
            heaviest = table[family.max_severity - 1]
            ms = _median_ms(lambda rng: sub(image, heaviest, rng), args.runs)
            print(f"{family_name}.{subtype}.severity{family.max_severity}_ms: {ms:.1f}")

    over = [name for name, ms in results.items() if ms > args.budget_ms]
    print(f"over_{args.budget_ms:g}ms: {over}")
    print(f"max_ms: {max(results.values()):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
