"""Which prompts share one `generate` call, so that a sample's greedy answer does not depend
on the batch it lands in.

A batch of prompts of different lengths is left-padded: the padded rows run other shapes
(longer attention, other matmul sizes) than the prompt alone, and on GPUs other kernels and
other rounding; in bf16 a near-tie of two tokens can then flip, and greedy decoding follows
the other token from there. So the answer of a sample could change with the block size,
`--retry-failed` or the GPU count. Two ways to share calls:

- `one` (default): one prompt per call. The answer depends on the prompt, the weights, the
  device type, dtype and library versions only: the same on every rerun, whatever the batch.
- `same_length`: prompts of identical token length share a call (never any padding). The
  padding effect is gone, but a GPU may still pick another kernel for another batch size, so
  the promise is narrower: identical on CPU (tested), and on a GPU for the same batch
  composition; use it for throughput when that is enough.
"""

from __future__ import annotations

from typing import Callable, Sequence

ONE, SAME_LENGTH = "one", "same_length"
BATCHING = (ONE, SAME_LENGTH)


def prompt_groups(lengths: Sequence[int], batching: str, max_batch: int | None = None
                  ) -> list[list[int]]:
    """Indices of the prompts that share a call, in the order of their first prompt."""
    if batching == ONE:
        return [[i] for i in range(len(lengths))]
    if batching != SAME_LENGTH:
        raise ValueError(f"generation batching {batching!r} is not one of {', '.join(BATCHING)}")
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    step = max(1, max_batch or len(lengths) or 1)
    return [g[k:k + step] for g in groups.values() for k in range(0, len(g), step)]


def generate_grouped(count: int, lengths: Callable[[], Sequence[int]], batching: str,
                     run: Callable[[list[int]], list]) -> list:
    """`run(indices)` answers the prompts at `indices` in one call; the answers of all
    `count` prompts come back in their order. `lengths` is only asked for `same_length`."""
    sizes = lengths() if batching == SAME_LENGTH else [0] * count
    out: list = [None] * count
    for group in prompt_groups(sizes, batching):
        for i, answer in zip(group, run(group)):
            out[i] = answer
    return out
