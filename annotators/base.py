"""The annotator contract: one small class per annotator.

A stage declares what it is and what it touches, on the class:

    name        the stage name (the key of its block in configs/annotate.yaml)
    produces    node types whose members it writes (`hed` -> `hed.png`)
    needs       node types whose members it reads (`target` -> `target.jpg`)
    optional    node types it reads when the sample has them (a fallback it can do without)
    reads       text/meta fields of the sample it reads: top-level fields of the source
                `meta.json` (`description`, `item`, `category`, ...) or `annotations.<stage>`,
                the meta entry an earlier stage wrote
    side_inputs names of shared read-only inputs it draws from (a style-reference pool):
                declared under `side_inputs:` in the annotate config
    requires    importable modules it needs; `extra` the pyproject extra providing them
    Options     a dataclass of its config keys: an unknown key is an error naming the close
                match, a value of the wrong type too

and implements either

    annotate(sample) -> Result            a CPU stage: everything in one step, or
    prepare(sample) -> Prepared           a model stage, split the way batch inference is
    predict(inputs: list) -> list         run: CPU pre-processing (tasks), the model alone
    encode(sample, context, output)       (an actor pool, one forward pass per batch), CPU
        -> Result                         encoding (tasks). `load()` builds the model, once
                                          per actor; `__init__` stays cheap (it only reads
                                          the options) because CPU tasks build the class too.

A `Sample` carries the key, the bytes of the `needs` members, the `reads` fields, the
side inputs and a seed derived from (run seed, key, stage, variant): the same bytes on
every rerun, whatever the block size, worker count or cluster. A `Result` holds the new
members (bytes) and an optional meta entry, stored as `annotations.<stage>` of the
sample's meta. Raising `NotApplicable` skips a sample with a reason (no usable box);
any other exception fails that sample only, with the reason recorded in the stats: one
bad sample never fails a batch, a block or a shard. `predict` raising on a batch is retried
one input at a time so that only the bad input fails.

`pipelines.stage_ops` runs these methods over Ray's column batches; `run_inline` (there)
runs a stage in one process through the very same code, for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from graph200k.config import ConfigError, build
from graph200k.nodes import member_node, node_type
from graph200k.shards import decode_image

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
_REASON_CHARS = 300  # a traceback-sized reason would bloat every stats file
ANNOTATIONS = "annotations"  # meta.json section holding the stages' meta entries
MAX_META_BYTES = 64 * 1024  # per sample and stage: meta entries are facts, not payloads


class MissingDependency(ImportError):
    pass


class NotApplicable(Exception):
    """Raised for a sample the stage has nothing to produce for (recorded as skipped)."""


def members_of(node_types) -> tuple[str, ...]:
    # dict keeps order and drops repeats (foreground and background share rmbg.png)
    return tuple(dict.fromkeys(m for n in node_types for m in node_type(n).members))


def failure_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]


def sample_seed(seed: int, key: str, stage: str, variant: int = 0) -> int:
    """A 63-bit seed from (run seed, key, stage, variant): independent of batch and worker."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}\x00{stage}\x00{int(variant)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Sample:
    """What a stage sees of one sample."""

    key: str
    members: dict[str, bytes]
    meta: dict = field(default_factory=dict)  # the fields of `reads` that the sample has
    seed: int = 0  # the run's seed (configs/annotate.yaml `seed:`)
    stage: str = ""
    side: dict = field(default_factory=dict)  # side input name -> SideInput

    def seed_for(self, variant: int = 0) -> int:
        return sample_seed(self.seed, self.key, self.stage, variant)

    def rng(self, variant: int = 0) -> np.random.Generator:
        return np.random.default_rng(self.seed_for(variant))

    def image(self, node: str = "target", mode: str = "RGB") -> np.ndarray:
        """The decoded image of a node this stage needs (uint8; errors name the member)."""
        member = node_type(node).members[0]
        data = self.members.get(member)
        if data is None:
            raise ValueError(f"{member} is absent from sample {self.key!r}")
        try:
            return decode_image(data, mode)
        except ValueError as e:
            raise ValueError(f"{member} does not decode ({e}); re-create the source shard "
                             "(python -m pipelines.ingest --force)") from None

    def text(self, name: str, default: str = "") -> str:
        value = self.meta.get(name)
        return value if isinstance(value, str) else default


@dataclass
class Result:
    members: dict[str, bytes]
    meta: dict | None = None  # stored as meta.json `annotations.<stage>`


class Prepared(NamedTuple):
    """What `prepare` returns: the model input (sent to the actor) and a small context kept
    on the CPU side for `encode` (original size, crop box...). Prefer uint8 inputs and
    normalise on the device: a quarter of the bytes through the object store."""

    inputs: Any
    context: Any = None


@dataclass
class NoOptions:
    pass


class Annotator:
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    produces: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ("target",)
    optional: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[tuple[str, ...]] = ()
    side_inputs: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "annotate"
    Options: ClassVar[type] = NoOptions

    def __init__(self, config: dict | None = None):
        self.check_dependencies()
        self.options = self.parse_options(config)
        self.output_members = members_of(self.produces)
        self.required_members = members_of(self.needs)
        self.input_members = members_of(self.needs + self.optional)
        self._loaded = False
        self.side: dict = {}  # side inputs by name, set by the runner (also seen in predict)

    @classmethod
    def parse_options(cls, config: dict | None):
        return build(cls.Options, dict(config or {}), f"stage {cls.name!r}")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def check_dependencies(cls) -> None:
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependency(
                f"annotator {cls.name!r} needs {', '.join(missing)}: "
                f"pip install 'graph200k[{cls.extra}]'"
            )

    @classmethod
    def is_model_stage(cls) -> bool:
        return cls.predict is not Annotator.predict

    @classmethod
    def reads_annotations_of(cls) -> list[str]:
        """Stages whose meta entries this stage reads (they must run before it)."""
        prefix = f"{ANNOTATIONS}."
        return [r[len(prefix):] for r in cls.reads if r.startswith(prefix)]

    # -- what subclasses implement ---------------------------------------------------
    def load(self) -> None:
        """Build the model (weights load here, once per actor). Called before `predict`."""

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def annotate(self, sample: Sample) -> Result | dict[str, bytes]:
        """A CPU stage: the members (and meta) of one sample."""
        raise NotImplementedError(f"stage {self.name!r} implements neither annotate nor predict")

    def prepare(self, sample: Sample) -> Prepared | Any:
        """A model stage, on the CPU: decode and resize one sample into a model input."""
        return Prepared(sample)

    def predict(self, inputs: list) -> list:
        """A model stage, on the accelerator: one output per input, in one forward pass."""
        raise NotImplementedError

    def encode(self, sample: Sample, context: Any, output: Any) -> Result | dict[str, bytes]:
        """A model stage, on the CPU: one output -> the sample's members (and meta)."""
        raise NotImplementedError(f"stage {self.name!r} must implement encode")

    # -- checks stages call on model outputs -----------------------------------------
    @staticmethod
    def check_finite(array, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"the model's {what} holds NaN or inf")
        return array

    @staticmethod
    def check_not_blank(array, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.size == 0 or not np.any(array):
            raise ValueError(f"the model's {what} is empty (all zero)")
        return array

    def check_result(self, result) -> Result:
        """A Result with bytes members of this stage's node types and a JSON-able meta."""
        if isinstance(result, dict):
            result = Result(result)
        if not isinstance(result, Result):
            raise TypeError(f"stage {self.name!r} returned {type(result).__name__}, not a Result")
        if not result.members and result.meta is None:
            raise ValueError(f"stage {self.name!r} returned no member and no meta")
        for m, value in result.members.items():
            if member_node(m) not in self.produces:
                raise ValueError(f"stage {self.name!r} returned member {m!r}, which is not one "
                                 f"of its node types {list(self.produces)}")
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"stage {self.name!r}: member {m!r} must be bytes, "
                                f"not {type(value).__name__}")
        if result.meta is not None:
            size = len(json_text(result.meta))
            if size > MAX_META_BYTES:
                raise ValueError(f"stage {self.name!r}: meta entry of {size} bytes "
                                 f"(limit {MAX_META_BYTES})")
        return result


def json_text(obj) -> str:
    """Canonical JSON of a meta entry; NaN/inf are refused (they are not JSON)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        raise ValueError(f"meta entry holds NaN or inf ({e})") from None


__all__ = ["Annotator", "ConfigError", "MissingDependency", "NotApplicable", "Prepared",
           "Result", "Sample", "OK", "SKIPPED", "FAILED", "ANNOTATIONS", "members_of",
           "failure_reason", "sample_seed", "json_text"]
