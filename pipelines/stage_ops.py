"""Annotators over column batches: the operators the pipeline hands to Ray Data.

A batch is Ray's "numpy" format, one column per field, one row per sample. Columns:

    __key__               the sample key
    __meta__              JSON: the text/meta fields the run's stages `read`
                          (`annotations.<stage>` holds an earlier run's meta entry)
    <member>              bytes of a member (`target.jpg`, `depth.png`), or None
    __do__:<stage>        "run": compute <stage> for this row; "keep": the stage's earlier
                          result for the row is kept (--retry-failed); "": not this run
    __in__:<stage>        the pickled model input (prepare -> predict)
    __ctx__:<stage>       the pickled context (prepare -> encode)
    __out__:<stage>       the pickled model output (predict -> encode)
    __status__:<stage>    "ok", "skipped: <why>", "failed: <why>", "" when not computed
    __seconds__:<stage>   worker seconds spent on the row in that stage, all operators
    __annot__:<stage>     JSON of the stage's meta entry, or ""

Every reader of a cell checks its type: Ray turns a column whose every value is missing
into floats (NaN), so "no bytes" may arrive as None or as NaN, and is the same thing.
Statuses and annotations are never None ("" instead) for the same reason.

One model stage is three operators: `prepare` (CPU tasks) -> `predict` (the actor that
loaded the model once) -> `encode` (CPU tasks). A CPU stage is one: `annotate`.
`run_inline` runs a stage through the same operators in one process (tests, benchmarks).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np

from annotators.base import (ANNOTATIONS, FAILED, OK, SKIPPED, Annotator, NotApplicable,
                             Prepared, Result, Sample, failure_reason, json_text)
from pipelines import device_faults
from pipelines.device_faults import FATAL, OOM, OTHER

log = logging.getLogger(__name__)
# The option that sets how many images one model call holds: the generative stages'
# `images_per_call`, a ModelStage's `micro_batch` (None: the whole group on a GPU).
PER_CALL_OPTIONS = ("images_per_call", "micro_batch")

KEY, META = "__key__", "__meta__"


def do_column(stage: str) -> str:
    return f"__do__:{stage}"


def status_column(stage: str) -> str:
    return f"__status__:{stage}"


def seconds_column(stage: str) -> str:
    return f"__seconds__:{stage}"


def annot_column(stage: str) -> str:
    return f"__annot__:{stage}"


def _in(stage: str) -> str:
    return f"__in__:{stage}"


def _ctx(stage: str) -> str:
    return f"__ctx__:{stage}"


def _out(stage: str) -> str:
    return f"__out__:{stage}"


# -- cells, robust to Ray's all-missing columns --------------------------------------------
def cell_bytes(batch: dict, column: str, i: int) -> bytes | None:
    col = batch.get(column)
    if col is None:
        return None
    v = col[i]
    return bytes(v) if isinstance(v, (bytes, bytearray, np.bytes_)) and len(v) else None


def cell_str(batch: dict, column: str, i: int) -> str:
    col = batch.get(column)
    if col is None:
        return ""
    v = col[i]
    return str(v) if isinstance(v, str) else ""


RUN, KEEP = "run", "keep"


def object_column(values) -> np.ndarray:
    values = list(values)
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def _rows(batch: dict) -> int:
    return len(batch[KEY])


def _set(batch: dict, column: str, i: int, value, fill=None) -> None:
    col = batch.get(column)
    if col is None or col.dtype != object:
        old = col
        col = np.full(_rows(batch), fill, dtype=object)
        if old is not None:
            col[:] = [fill if (isinstance(v, float) and np.isnan(v)) else v for v in old]
        batch[column] = col
    col[i] = value


def _add_seconds(batch: dict, stage: str, rows: list[int], seconds: float) -> None:
    col = batch.get(seconds_column(stage))
    n = _rows(batch)
    if col is None or col.dtype.kind != "f":
        col = np.zeros(n, dtype=np.float64)
    else:
        col = np.nan_to_num(col.astype(np.float64, copy=True))
    if rows:
        col[rows] += seconds / len(rows)
    batch[seconds_column(stage)] = col


def statuses(batch: dict, stage: str) -> list[str]:
    return [cell_str(batch, status_column(stage), i) for i in range(_rows(batch))]


class StageRunner:
    """One annotator and the bookkeeping of its operators on column batches."""

    def __init__(self, annotator: Annotator, seed: int = 0, side: dict | None = None):
        self.annotator = annotator
        self.stage = annotator.name
        self.seed = int(seed)
        self.side = dict(side or {})
        self.max_inputs: int | None = None  # inputs per predict call (None: the whole batch)
        annotator.side = self.side  # the model side reads side inputs too (in `predict`)

    # -- samples -------------------------------------------------------------------------
    def _sample(self, batch: dict, i: int) -> Sample:
        a = self.annotator
        members = {}
        for m in a.input_members:
            value = cell_bytes(batch, m, i)
            if value is not None:
                members[m] = value
        absent = [m for m in a.required_members if m not in members]
        if absent:
            raise _Absent(f"needs {', '.join(absent)}, absent from the sample")
        stored = json.loads(cell_str(batch, META, i) or "{}")
        meta = {}
        prefix = f"{ANNOTATIONS}."
        for name in a.reads:
            if name.startswith(prefix):
                fresh = cell_str(batch, annot_column(name[len(prefix):]), i)
                if fresh:  # produced earlier in this run
                    meta[name] = json.loads(fresh)
                    continue
            if name in stored:
                meta[name] = stored[name]
        return Sample(key=str(batch[KEY][i]), members=members, meta=meta, seed=self.seed,
                      stage=self.stage, side=self.side)

    def _todo(self, batch: dict, only_with: str | None = None) -> list[int]:
        rows = []
        for i in range(_rows(batch)):
            if cell_str(batch, do_column(self.stage), i) != RUN:
                continue
            if cell_str(batch, status_column(self.stage), i):  # already decided (failed)
                continue
            if only_with is not None and cell_bytes(batch, only_with, i) is None:
                continue
            rows.append(i)
        return rows

    def _fail(self, batch: dict, i: int, exc: BaseException) -> None:
        _set(batch, status_column(self.stage), i, _status_of(exc), "")

    def _finish(self, batch: dict, i: int, result) -> None:
        result: Result = self.annotator.check_result(result)
        annot = json_text(result.meta) if result.meta is not None else ""
        for m, value in result.members.items():
            _set(batch, m, i, bytes(value))
        _set(batch, annot_column(self.stage), i, annot, "")
        _set(batch, status_column(self.stage), i, OK, "")

    def _columns(self, batch: dict) -> dict:
        """The batch with this stage's output columns present (a fixed schema per stage)."""
        batch = dict(batch)
        n = _rows(batch)
        for m in self.annotator.output_members:
            if m not in batch or batch[m].dtype != object:
                batch[m] = np.full(n, None, dtype=object)
        for col in (status_column(self.stage), annot_column(self.stage)):
            if col not in batch or batch[col].dtype != object:
                batch[col] = np.full(n, "", dtype=object)
        return batch

    # -- a CPU stage ---------------------------------------------------------------------
    def annotate_batch(self, batch: dict) -> dict:
        start = time.perf_counter()
        batch = self._columns(batch)
        rows = self._todo(batch)
        for i in rows:
            try:
                self._finish(batch, i, self.annotator.annotate(self._sample(batch, i)))
            except Exception as e:  # one bad sample never fails its neighbours
                self._fail(batch, i, e)
        _add_seconds(batch, self.stage, rows, time.perf_counter() - start)
        return batch

    # -- a model stage: prepare -> predict -> encode ----------------------------------------
    def prepare_batch(self, batch: dict) -> dict:
        start = time.perf_counter()
        batch = self._columns(batch)
        rows = self._todo(batch)
        for i in rows:
            try:
                prepared = self.annotator.prepare(self._sample(batch, i))
                if not isinstance(prepared, Prepared):
                    prepared = Prepared(prepared)
                _set(batch, _in(self.stage), i, pickle.dumps(prepared.inputs, protocol=5))
                _set(batch, _ctx(self.stage), i, pickle.dumps(prepared.context, protocol=5))
            except Exception as e:
                self._fail(batch, i, e)
        _add_seconds(batch, self.stage, rows, time.perf_counter() - start)
        return batch

    def predict_batch(self, batch: dict) -> dict:
        start = time.perf_counter()
        batch = dict(batch)
        self.annotator.ensure_loaded()
        rows = self._todo(batch, only_with=_in(self.stage))
        inputs = [pickle.loads(cell_bytes(batch, _in(self.stage), i)) for i in rows]
        for i, output in zip(rows, self._predict_isolated(inputs)):
            if isinstance(output, _Failed):
                _set(batch, status_column(self.stage), i, output.status, "")
            else:
                _set(batch, _out(self.stage), i, pickle.dumps(output, protocol=5))
        batch.pop(_in(self.stage), None)  # the inputs do not travel on
        _add_seconds(batch, self.stage, rows, time.perf_counter() - start)
        return batch

    # Out of memory: smaller calls until they fit (the smaller size stays for the actor's
    # later batches: a generative stage's calls all have one size, what failed once would
    # again), then input by input. A sticky CUDA error exits the process (device_faults).
    def _predict_isolated(self, inputs: list) -> list:
        if not inputs:
            return []
        outputs, failure = self._call(inputs)
        while failure is not None and failure.kind == OOM and self._shrink(len(inputs)):
            outputs, failure = self._call(inputs)
        if failure is None:
            return outputs
        if len(inputs) == 1:
            return [failure]
        return [self._alone(x) for x in inputs]  # only the bad inputs fail

    def _alone(self, x):
        outputs, failure = self._call([x])
        return failure if failure is not None else outputs[0]

    def _call(self, inputs: list) -> tuple[list | None, _Failed | None]:
        """predict over `inputs` in calls of at most `max_inputs`; (outputs, None) or
        (None, the failure as text: never the exception, which holds the batch)."""
        step = self.max_inputs or len(inputs)
        outputs: list = []
        try:
            for start in range(0, len(inputs), step):
                chunk = inputs[start:start + step]
                got = list(self.annotator.predict(chunk))
                if len(got) != len(chunk):
                    return None, _Failed(OTHER, f"{FAILED}: RuntimeError: predict returned "
                                                f"{len(got)} outputs for {len(chunk)} inputs")
                outputs.extend(got)
            return outputs, None
        except Exception as e:
            kind = device_faults.kind(e)
            if kind == FATAL:
                device_faults.exit_for_restart(self.stage, device_faults.first_line(e))
            failure = _Failed(kind, self._oom_status(e) if kind == OOM else _status_of(e))
        outputs = []  # earlier chunks' results are redone with the rest: drop them too
        if failure.kind == OOM:  # `e` is gone with its except clause: its frames can go
            device_faults.free_device_memory()
        return None, failure

    def _per_call(self) -> tuple[str | None, int | None]:
        options = getattr(self.annotator, "options", None)
        for name in PER_CALL_OPTIONS:
            if options is not None and hasattr(options, name):
                return name, getattr(options, name)
        return None, None

    def _oom_status(self, e: BaseException) -> str:
        """The error first (statuses read "Type: message"; reports group by it), then why
        no retry is left: the input ran out of memory alone, at the smallest call size."""
        option, size = self._per_call()
        at = f"{option} {size or 'all'}" if option else "one input per call"
        return (f"{FAILED}: {device_faults.first_line(e, 160)} (out of GPU memory alone in its "
                f"call, at {at})")

    def _shrink(self, n_inputs: int) -> bool:
        """Halve the size of a model call; False when it is one image already."""
        option, size = self._per_call()
        if option is not None:
            if size is not None and size <= 1:
                return False
            new = max(1, (size or n_inputs) // 2)
            setattr(self.annotator.options, option, new)
            what = f"{option} {size or 'all'} -> {new}"
        else:
            size = self.max_inputs or n_inputs
            if size <= 1:
                return False
            self.max_inputs = new = max(1, size // 2)
            what = f"inputs per predict call {size} -> {new}"
        log.warning("stage %r: out of GPU memory; retrying with %s (kept for this actor)",
                    self.stage, what)
        return True

    def encode_batch(self, batch: dict) -> dict:
        start = time.perf_counter()
        batch = dict(batch)
        rows = self._todo(batch, only_with=_out(self.stage))
        for i in rows:
            try:
                context = pickle.loads(cell_bytes(batch, _ctx(self.stage), i))
                output = pickle.loads(cell_bytes(batch, _out(self.stage), i))
                self._finish(batch, i, self.annotator.encode(self._sample(batch, i), context,
                                                             output))
            except Exception as e:
                self._fail(batch, i, e)
        for i in self._todo(batch):  # computed but lost on the way: say so
            self._fail(batch, i, RuntimeError("no model output reached the encoder"))
        batch.pop(_out(self.stage), None)
        batch.pop(_ctx(self.stage), None)
        _add_seconds(batch, self.stage, rows, time.perf_counter() - start)
        return batch


class _Absent(ValueError):
    """A needed member is absent: the sample fails with that reason, no traceback type."""


class _Failed(NamedTuple):
    """An input's failed predict, as text: what its status column will say."""

    kind: str  # device_faults.OOM | OTHER
    status: str


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, NotApplicable):
        return f"{SKIPPED}: {str(exc)[:300]}"
    if isinstance(exc, _Absent):
        return f"{FAILED}: {exc}"
    return f"{FAILED}: {failure_reason(exc)}"


# -- in one process: tests and benchmarks -------------------------------------------------
@dataclass
class Outcome:
    key: str
    status: str
    members: dict[str, bytes]
    meta: dict | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == OK


def samples_batch(samples: Iterable[Sample], stages: Iterable[str]) -> dict:
    samples = list(samples)
    names = sorted({m for s in samples for m in s.members})
    batch = {KEY: object_column(s.key for s in samples),
             META: object_column(json.dumps(s.meta, sort_keys=True) for s in samples)}
    for m in names:
        batch[m] = object_column(s.members.get(m) for s in samples)
    for stage in stages:
        batch[do_column(stage)] = np.full(len(samples), RUN, dtype=object)
    return batch


def run_inline(annotator: Annotator, samples: list[Sample], batch_size: int = 8,
               seed: int | None = None, side: dict | None = None) -> list[Outcome]:
    """Run one stage over samples in this process, through the pipeline's operators.

    Samples are cut into batches of `batch_size` (the model sees that many per forward
    pass); `seed` defaults to the samples' own (they carry the run seed).
    """
    samples = list(samples)
    if seed is None:
        seed = samples[0].seed if samples else 0
    if side is None:
        side = samples[0].side if samples else {}
    runner = StageRunner(annotator, seed, side)
    outcomes: list[Outcome] = []
    for start in range(0, len(samples), max(1, batch_size)):
        batch = samples_batch(samples[start:start + batch_size], [annotator.name])
        if annotator.is_model_stage():
            batch = runner.encode_batch(runner.predict_batch(runner.prepare_batch(batch)))
        else:
            batch = runner.annotate_batch(batch)
        outcomes.extend(outcomes_of(batch, annotator))
    return outcomes


def outcomes_of(batch: dict, annotator: Annotator) -> list[Outcome]:
    stage = annotator.name
    out = []
    for i in range(_rows(batch)):
        members = {m: v for m in annotator.output_members
                   if (v := cell_bytes(batch, m, i)) is not None}
        annot = cell_str(batch, annot_column(stage), i)
        status = cell_str(batch, status_column(stage), i)
        seconds = float(np.nan_to_num(batch[seconds_column(stage)][i]))
        out.append(Outcome(str(batch[KEY][i]), status, members if status == OK else {},
                           json.loads(annot) if annot else None, seconds))
    return out
