"""Micro-batches of one grid layout: no padding and no key-padding mask in the common case.

Two grids share their position ids exactly when their rows have the same pixel sizes, in
order (axis 0 = row number, axes 1-2 restart per row). A micro-batch of such grids takes
diffusers' shared-id path (one (N, 3) table, full-length SDPA that FlashAttention runs);
a mix pads to the longest grid and masks the keys (the math/efficient kernels only).
Cut in stream order, 85-89 % of the micro-batches of 2 of the task mix (1-3 rows, 2-4
columns) mix layouts and 18-23 % of their tokens are padding (bench_fill's `layout.*` lines).

``plan_micro_batches(keys, size, count)`` groups the grids of ONE optimizer step, so the
stream's order across steps, the checkpointed data state and the gradient of the step (the
mean over its grids) stay what they were: resume stays exact without holding grids over a
step boundary. The bounded wait of a bucket is the step itself.
"""

from __future__ import annotations

from graph200k.grid import Grid
from train.visualcloze.inputs import grid_tokens


def layout_key(grid: Grid) -> tuple[tuple[int, int], ...]:
    """(height, width) of every row in order: equal keys, equal position ids."""
    return tuple((int(r.shape[0]), int(r.shape[1])) for r in grid.rows)


def plan_micro_batches(keys: list, size: int, count: int = 0) -> list[list[int]]:
    """Indices of the step's grids in micro-batches of one layout and at most `size` grids, in
    the order of each layout's first grid. `count` > the plan's length: the largest micro-batches
    are split (FSDP gathers parameters on every forward, so every rank must run as many)."""
    if count > len(keys):
        raise ValueError(f"cannot form {count} micro-batches from {len(keys)} grids")
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    plan = [members[j:j + size] for members in groups.values() for j in range(0, len(members), size)]
    while len(plan) < count:
        big = max(range(len(plan)), key=lambda j: len(plan[j]))  # first of the largest: deterministic
        half = (len(plan[big]) + 1) // 2
        plan[big:big + 1] = [plan[big][:half], plan[big][half:]]
    return plan


def consecutive_micro_batches(n: int, size: int) -> list[list[int]]:
    """The stream order cut every `size` grids (data.group_by_layout: false)."""
    return [list(range(j, min(j + size, n))) for j in range(0, n, size)]


def padding_stats(micro_batches: list[list[Grid]], s: int) -> dict[str, int]:
    """Counts for the logs and bench_fill: micro-batches (and how many take the masked per-sample
    path because their layouts differ), image tokens, and padding tokens that masked path adds."""
    masked = tokens = padded = 0
    for mb in micro_batches:
        sizes = [grid_tokens(g, s) for g in mb]
        if len({layout_key(g) for g in mb}) > 1:
            masked += 1
            padded += len(sizes) * max(sizes) - sum(sizes)
        tokens += sum(sizes)
    return {"micro_batches": len(micro_batches), "masked_micro_batches": masked, "image_tokens": tokens,
            "padding_tokens": padded}
