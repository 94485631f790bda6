"""The annotator contract: one small class per annotator, run by Ray Data over column batches.

A batch is Ray's "numpy" batch format holding webdataset-style samples column-wise:
`{"__key__": array[str], "target.jpg": array[bytes | None], "meta.json": ..., ...}`.
Member columns hold raw bytes, or None where a sample lacks that member; columns whose
names start with `__` are bookkeeping, never written as members.

The pipeline sends only the members some stage reads; an optional bookkeeping column
`__present__` (a JSON list per row) names every member the sample holds, whether or not
its bytes travel, so that a sample already holding a stage's outputs is skipped without
shipping them.

An annotator adds the members of the node types it `produces` and two bookkeeping
columns per stage: `__status__:<name>` ("ok", "skipped" or "failed: <reason>") and
`__seconds__:<name>` (the batch's wall time shared over its rows). Errors on one sample
are caught here and recorded: Ray Data's `max_errored_blocks` defaults to 0, so an
exception escaping a stage would kill the whole job (DESIGN.md).
"""

from __future__ import annotations

import importlib.util
import json
import time
from typing import ClassVar

import numpy as np

from graph200k.nodes import node_type
from graph200k.shards import decode_image

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
ERROR_COLUMN = "__error__"  # set on the one placeholder row of a shard that could not be read
PRESENT_COLUMN = "__present__"  # JSON list of the member names a sample holds (optional)
_REASON_CHARS = 300  # a traceback-sized reason would bloat every stats file


def status_column(stage: str) -> str:
    return f"__status__:{stage}"


def seconds_column(stage: str) -> str:
    return f"__seconds__:{stage}"


def members_of(node_types) -> tuple[str, ...]:
    # dict keeps order and drops repeats (foreground and background share rmbg.png)
    return tuple(dict.fromkeys(m for n in node_types for m in node_type(n).members))


def failure_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]


class MissingDependency(ImportError):
    pass


class Annotator:
    """Base class. Subclasses set the class attributes and implement `annotate` (one sample)
    or, for batched models, `annotate_batch` (many samples, one forward pass)."""

    name: ClassVar[str] = ""
    produces: ClassVar[tuple[str, ...]] = ()  # node types whose members this stage writes
    needs: ClassVar[tuple[str, ...]] = ("target",)  # node types it reads
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs
    extra: ClassVar[str] = "annotate"  # the pyproject extra that provides them

    def __init__(self, config: dict | None = None):
        self.check_dependencies()
        self.config = dict(config or {})
        self.output_members = members_of(self.produces)
        self.input_members = members_of(self.needs)

    @classmethod
    def check_dependencies(cls) -> None:
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependency(
                f"annotator {cls.name!r} needs {', '.join(missing)}: "
                f"pip install 'graph200k[{cls.extra}]'"
            )

    # -- what subclasses implement ---------------------------------------------------
    def annotate(self, sample: dict) -> dict[str, bytes]:
        """Members (name -> encoded bytes) for one sample; raise on a bad sample."""
        raise NotImplementedError

    def annotate_batch(self, samples: list[dict]) -> list[dict[str, bytes]]:
        """Members for many samples. Override for batched models; raising here makes the
        base class retry sample by sample so that only the bad sample fails."""
        return [self.annotate(s) for s in samples]

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def image(sample: dict, node: str = "target", mode: str = "RGB") -> np.ndarray:
        member = node_type(node).members[0]
        try:
            return decode_image(sample[member], mode)
        except ValueError as e:
            raise ValueError(f"{member} does not decode ({e}); re-create the source shard "
                             "(python -m pipelines.ingest --force)") from None

    # -- the Ray Data entry point ----------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        keys = batch["__key__"]
        n = len(keys)
        errors = batch.get(ERROR_COLUMN)
        present = batch.get(PRESENT_COLUMN)
        status = np.full(n, None, dtype=object)
        out = {m: _object_column(batch.get(m), n) for m in self.output_members}

        todo: list[int] = []
        for i in range(n):
            if errors is not None and errors[i]:
                continue  # placeholder of an unreadable shard: nothing to annotate
            held = set(json.loads(present[i])) if present is not None and present[i] else ()
            if all(out[m][i] is not None or m in held for m in self.output_members):
                status[i] = SKIPPED  # the pipeline keeps the held members byte for byte
                continue
            absent = [m for m in self.input_members if batch.get(m) is None or batch[m][i] is None]
            if absent:
                status[i] = f"{FAILED}: needs {', '.join(absent)}, absent from the sample"
                continue
            todo.append(i)

        samples = [_row(batch, i) for i in todo]
        for i, result in zip(todo, self._annotate_isolated(samples)):
            if isinstance(result, BaseException):
                status[i] = f"{FAILED}: {failure_reason(result)}"
                continue
            wrong = set(result) ^ set(self.output_members)
            if wrong or not all(isinstance(v, (bytes, bytearray)) for v in result.values()):
                status[i] = (f"{FAILED}: annotator returned members {sorted(result)}, "
                             f"expected {list(self.output_members)} as bytes")
                continue
            for m, value in result.items():
                if out[m][i] is None:  # an existing member is kept byte for byte
                    out[m][i] = bytes(value)
            status[i] = OK

        result_batch = dict(batch)
        result_batch.update(out)
        result_batch[status_column(self.name)] = status
        per_row = (time.perf_counter() - start) / max(n, 1)
        result_batch[seconds_column(self.name)] = np.full(n, per_row, dtype=np.float64)
        return result_batch

    def _annotate_isolated(self, samples: list[dict]) -> list:
        if not samples:
            return []
        try:
            results = self.annotate_batch(samples)
            if len(results) == len(samples):
                return results
            failure: Exception = RuntimeError(
                f"annotate_batch returned {len(results)} results for {len(samples)} samples")
        except Exception as e:
            failure = e
        if len(samples) == 1:
            return [failure]
        # Retry one sample at a time, so only the bad sample is recorded as failed.
        out = []
        for s in samples:
            try:
                out.append(self.annotate_batch([s])[0])
            except Exception as e:  # one bad sample must not fail its neighbours
                out.append(e)
        return out


def _object_column(column, n: int) -> np.ndarray:
    col = np.full(n, None, dtype=object)
    if column is not None:
        col[:] = list(column)
    return col


def _row(batch: dict[str, np.ndarray], i: int) -> dict:
    return {k: v[i] for k, v in batch.items() if v[i] is not None}
