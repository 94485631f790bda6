"""Model stages whose "GPU" fails on purpose: out of memory above a call size, or a sticky
CUDA error. Beside the tests (not in a package) so Ray workers import it by module name."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

from annotators.base import Annotator, Prepared, Result

OOM_TEXT = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
            "79.10 GiB of which 3.50 GiB is free.")
ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered"


@dataclass
class FakeGeneratorOptions:
    images_per_call: int = 8
    fits: int = 2  # a call of more images than this runs out of memory
    too_big: list = field(default_factory=list)  # sample keys that never fit
    fatal_on: list = field(default_factory=list)  # sample keys whose call breaks the context


class FakeGenerator(Annotator):
    """One image per sample, `images_per_call` per call, as the generative stages; every
    call's batch tensor and every raised error are watched through weak references."""

    name = "fakegen"
    produces = ()
    needs = ("target",)
    Options = FakeGeneratorOptions

    def __init__(self, config=None):
        super().__init__(config)
        self.calls: list[int] = []
        self.watched: list[weakref.ref] = []

    def prepare(self, sample):
        return Prepared(sample.key)

    def per_call(self, n: int) -> int:
        return self.options.images_per_call

    def predict(self, inputs):
        import torch  # here: the Ray test's actor (CrashOnce) starts without it

        out = []
        step = self.per_call(len(inputs))
        for start in range(0, len(inputs), step):
            keys = inputs[start:start + step]
            batch = torch.full((len(keys), 16), float(len(keys)))  # the call's "GPU" tensors
            self.watched.append(weakref.ref(batch))
            self.calls.append(len(keys))
            if any(k in self.options.fatal_on for k in keys):
                raise RuntimeError(ILLEGAL_ADDRESS)
            if len(keys) > self.options.fits or any(k in self.options.too_big for k in keys):
                error = torch.OutOfMemoryError(OOM_TEXT)
                self.watched.append(weakref.ref(error))
                raise error
            out.extend(f"{k}:{int(v)}" for k, v in zip(keys, batch[:, 0].tolist()))
        return out

    def encode(self, sample, context, output):
        return Result({}, meta={"output": output.split(":")[0]})


@dataclass
class PlainOptions:
    fits: int = 2
    too_big: list = field(default_factory=list)
    fatal_on: list = field(default_factory=list)


class FakeNet(FakeGenerator):
    """No call-size option: the whole predict batch is one call."""

    name = "fakenet"
    Options = PlainOptions

    def per_call(self, n: int) -> int:
        return max(1, n)


@dataclass
class CrashOnceOptions:
    marker: str = ""


_POISONED: list = []  # this process's "CUDA context" is broken: every later call fails


class CrashOnce(Annotator):
    """A model stage whose first predict call (no marker file yet) hits a sticky CUDA error:
    every later call of the same process fails too, as on a real GPU; a new process works."""

    name = "crashonce"
    produces = ()
    needs = ("target",)
    Options = CrashOnceOptions

    def prepare(self, sample):
        return Prepared(len(sample.members["target.jpg"]))

    def predict(self, inputs):
        marker = Path(self.options.marker)
        if not marker.exists():
            marker.write_text("crashed")
            _POISONED.append(True)
        if _POISONED:
            raise RuntimeError(ILLEGAL_ADDRESS)
        return [n % 251 for n in inputs]

    def encode(self, sample, context, output):
        return Result({}, meta={"bytes_mod_251": output})
