"""Every GPU figure in one command that fits a short lease: one `name: value` table + JSON.

    python benchmarks/bench_gpu.py [--json build/bench-gpu.json] [--parts models,fill]
    python benchmarks/bench_gpu.py --dry-run          # the same script, CPU, tiny sizes
    python benchmarks/bench_gpu.py --readme-table build/bench-gpu.json

On one CUDA GPU, with random weights built from the real configs (nothing downloaded), in
bf16 at full size, each part reusing the benchmark that owns it, in this order:
  fill        the Fill LoRA step at 384², micro-batch 2: tokens/s, MFU against the card's
              bf16 peak (benchmarks/gpu_info.py), peak memory (bench_fill)
  cogvideox   the CogVideoX1.5-5B two-frame LoRA step, base and FCD A (bench_cogvideox)
  evaluate    the evaluation's metric pass, batched vs one image at a time (bench_evaluate)
  annotate    200 samples through `pipelines.annotate` with two GPU stages (depth,
              uniformer) on Ray: images/s, GPU utilisation sampled with NVML
  generative  the four generative stages, batched vs one sample at a time (bench_generative)
  models      every model stage, our batched stage vs the per-image way, batch 32
              (bench_models: models_dense + models_masks)
Each part runs in a process forked for it (its GPU memory is freed when it ends) with a
time budget, plus what the parts before it left unused: a part whose own budget no longer
fits the total is skipped and says so; inside a part, an item whose estimate no longer
fits says so; a part still running at its budget is stopped (with whatever it started),
keeping the lines it wrote. Without CUDA it refuses to start (exit 2) unless --dry-run,
which runs every part on the CPU with tiny models in under 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(BENCH)]

DEFAULT_JSON = ROOT / "build" / "bench-gpu.json"
# The issue's 8 minutes, the CUDA check and the shared imports included; the parts' own
# budgets below add up to less, so that on a GPU every part gets its whole budget.
TOTAL_BUDGET_S = {"gpu": 480.0, "dry": 110.0}
ANNOTATE_SAMPLES = {"gpu": 200, "dry": 8}
DENSE = ("hed", "mlsd", "openpose", "depth", "normal", "uniformer")
GENERATIVE = ("instantstyle", "reduxstyle", "filledit", "depthedit")


# -- inside a part's process -----------------------------------------------------------------
@dataclass
class Context:
    dry_run: bool
    device_name: str
    peak_tflops: float | None
    deadline: float  # time.time() at which the parent stops this part
    results: Path
    tiny_models: Path
    tmp: Path

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def emit(self, name: str, value) -> None:
        """One line, appended and flushed at once: a part stopped at its budget keeps it."""
        if isinstance(value, float) and value != value:
            value = None  # NaN (no CUDA memory figure on the CPU): null in strict JSON
        with open(self.results, "a") as f:
            f.write(json.dumps({"name": name, "value": value}) + "\n")

    def left(self) -> float:
        return self.deadline - time.time()

    def item(self, name: str, estimate: tuple[float, float], fn: Callable[[], list]) -> None:
        """Run `fn` (-> [(name, value)]) unless its estimate (gpu, dry seconds) no longer fits."""
        need = estimate[1] if self.dry_run else estimate[0]
        if self.left() < need:
            self.emit(f"{name}.skipped", f"would overrun: needs ~{need:.0f} s, "
                                         f"{max(0.0, self.left()):.0f} s of the part's budget left")
            return
        start = time.perf_counter()
        for key, value in fn():
            self.emit(key, value)
        self.emit(f"{name}.seconds", round(time.perf_counter() - start, 2))

    def tiny(self, *names: str) -> dict[str, Path]:
        from annotators.tiny_models import build

        return build(self.tiny_models, only=names, seed=0, log=lambda *_: None)


def part_models(ctx: Context) -> None:
    import torch

    import models_dense
    import models_masks
    from annotate_helpers import stage_samples

    if ctx.dry_run:
        torch.set_num_threads(1)
    batch = 2 if ctx.dry_run else 32
    samples = stage_samples(2 if ctx.dry_run else 2 * batch, size=64 if ctx.dry_run else 512)
    ctx.emit("batch_size", batch)
    ctx.emit("dense_images", len(samples))
    ctx.emit("dtype", "float32" if ctx.dry_run else "bfloat16")
    # the per-image way of `normal` is controlnet_aux's MiDaS: our MidasNormal stage (the
    # tiny `normal` model is DSINE's, the default stage's)
    names = {**{s: s for s in DENSE}, "normal": "midas_normal", "sam2": "sam2"}
    built = ctx.tiny(*names.values()) if ctx.dry_run else {}
    tiny = {s: built[n] for s, n in names.items() if n in built}
    for name in DENSE:
        ctx.item(name, (20, 3), lambda name=name: models_dense.bench_stage(
            name, samples, batch, 1, not ctx.dry_run, None if ctx.dry_run else "bfloat16",
            tiny.get(name)))
    args = argparse.Namespace(gpu=not ctx.dry_run, images=2 if ctx.dry_run else 16,
                               batch_size=2 if ctx.dry_run else 16, rounds=1, stages=[])
    root = ctx.tmp / "masks"
    root.mkdir()
    ctx.emit("masks_images", args.images)
    ctx.item("sam2_mask", (30, 5), lambda: models_masks.bench_sam2(
        args, root, ctx.device, tiny.get("sam2"), 4 if ctx.dry_run else None))
    ctx.item("rmbg", (10, 5), lambda: models_masks.bench_rmbg(
        args, root, ctx.device, 64 if ctx.dry_run else 1024))
    ctx.item("vlm", (75, 10), lambda: models_masks.bench_vlm(args, root, ctx.device,
                                                             tiny.get("sam2")))


def part_generative(ctx: Context) -> None:
    import bench_generative
    from annotators.tiny_models.generative import TINY

    # 2 denoising steps on a GPU: the batched / one-at-a-time ratio is per step; a FLUX
    # stage at 1024² (12B transformer + T5-XXL built on the device) must fit ~30 s
    args = argparse.Namespace(samples=2 if ctx.dry_run else 4, steps=1 if ctx.dry_run else 2,
                               variants=2, images_per_call=4, rounds=1)
    ctx.emit("samples", args.samples)
    ctx.emit("steps", args.steps)
    for name in GENERATIVE:
        args.stages = [name]
        if ctx.dry_run:
            run = lambda a=args: bench_generative.gpu_main(  # noqa: E731
                a, device="cpu", shapes=TINY, size=32, dtype="float32")
        else:
            run = lambda a=args: bench_generative.gpu_main(a)  # noqa: E731
        ctx.item(name, (35, 4), run)


def part_evaluate(ctx: Context) -> None:
    import torch

    import bench_evaluate

    if ctx.dry_run:
        r = bench_evaluate.measure(torch.device("cpu"), torch.float32, "tiny", images=4,
                                   batch_size=2, size=64,
                                   tiny_models=str(ctx.tiny_models / "eval"))
    else:
        r = bench_evaluate.measure(torch.device("cuda"), torch.float16, "real", images=64,
                                   batch_size=64)
    for key, value in r.items():
        ctx.emit(key, value)


def part_fill(ctx: Context) -> None:
    import bench_fill

    if ctx.dry_run:
        results = bench_fill.bench_gpu(1.0, 1, device="cpu", tiny=True, res=64, text_tokens=8,
                                       micro_batches=(2,))
    else:
        results = bench_fill.bench_gpu(ctx.peak_tflops, 4, res=384, micro_batches=(2,))
    ctx.emit("res", 64 if ctx.dry_run else 384)
    ctx.emit("micro_batch", 2)
    ctx.emit("peak_tflops", ctx.peak_tflops if not ctx.dry_run else "1.0 (dry run, nominal)")
    for key, value in results[2].items():
        ctx.emit(f"mb2.{key}", value)


def part_cogvideox(ctx: Context) -> None:
    import bench_cogvideox

    if ctx.dry_run:
        args = argparse.Namespace(gpu_res=32, steps=1, warmup=0, peak_tflops=1.0)
        r = bench_cogvideox.gpu_main(args, device="cpu", cfg=bench_cogvideox.SMALL, rank=4,
                                     variants=("A",))
    else:
        args = argparse.Namespace(gpu_res=512, steps=3, warmup=1,
                                   peak_tflops=ctx.peak_tflops or float("nan"))
        r = bench_cogvideox.gpu_main(args, variants=("A",))
    ctx.emit("res", args.gpu_res)
    for name, times in r["steps"].items():
        ctx.emit(f"{name}.step_s", min(times))
        ctx.emit(f"{name}.mfu", r["mfu"][name])
        ctx.emit(f"{name}.peak_memory_gb", r["peak_memory_gb"][name])
    ctx.emit("ratio_fcd_A_vs_base", min(r["steps"]["fcd_A"]) / min(r["steps"]["base"]))


def annotate_models(ctx: Context) -> dict[str, dict]:
    """Two GPU stages' config blocks: real-size random weights saved in production layout,
    or (dry run) the tiny models."""
    if ctx.dry_run:
        tiny = ctx.tiny("depth", "uniformer")
        common = {"device": "cpu", "num_cpus": 0.1, "concurrency": 1, "batch_size": 4}
        return {"depth": {"class": "annotators.depth.Depth", "model": str(tiny["depth"]),
                          **common},
                "uniformer": {"class": "annotators.uniformer.Uniformer", "resolution": 256,
                              "model": str(tiny["uniformer"]), **common}}
    import models_dense

    blocks = {}
    for name, cls in (("depth", "annotators.depth.Depth"),
                      ("uniformer", "annotators.uniformer.Uniformer")):
        folder = ctx.tmp / f"{name}-model"
        net, _ = models_dense.real_net(name, folder)  # config + processor written there
        net.save_pretrained(folder)
        blocks[name] = {"class": cls, "model": str(folder), "dtype": "bfloat16",
                        "num_gpus": 0.5, "concurrency": 1, "batch_size": 32}
    return blocks


def part_annotate(ctx: Context) -> None:
    import yaml

    from bench_annotate import write_source
    from gpu_info import UtilisationSampler
    from pipelines import annotate

    samples = ANNOTATE_SAMPLES["dry" if ctx.dry_run else "gpu"]
    src, out = ctx.tmp / "source", ctx.tmp / "graph200k"
    write_source(src, samples, 64 if ctx.dry_run else 512)
    stages = annotate_models(ctx)
    num_cpus = 2 if ctx.dry_run else max(2, os.cpu_count() or 2)
    config = ctx.tmp / "annotate.yaml"
    config.write_text(yaml.safe_dump({
        # dry run: one block (each Ray task is a worker's imports on 2 cores)
        "ray": {"num_cpus": num_cpus, "rows_per_block": samples if ctx.dry_run else 32,
                "reserve_per_operator": False},
        "stages": stages}))
    ctx.emit("samples", samples)
    ctx.emit("stages", ",".join(stages))
    ctx.emit("num_cpus", num_cpus)
    sampler = UtilisationSampler().start()
    start = time.perf_counter()
    try:
        report = annotate.run("all", list(stages), str(config), str(src), str(out), force=True,
                              num_cpus=num_cpus)
    finally:
        seconds = time.perf_counter() - start
        util = sampler.stop()
        import ray

        ray.shutdown()
    ctx.emit("run_seconds", seconds)  # Ray's start and the actors' model loads included
    ctx.emit("images_per_s", samples / seconds)
    ctx.emit("errors", len(report.errors))
    ok = sum(stats.get("ok", 0) for stats in report.written.values())
    ctx.emit("stage_samples_ok", ok)
    for key, value in util.items():
        ctx.emit(key, value)


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Context], None]
    budget_s: dict  # {"gpu": s, "dry": s}: the part's process, start-up included


# In this order; the models part last: its items (stages) are skipped one by one when its
# budget, plus whatever the parts before it left unused, runs short.
PARTS = (
    Part("fill", part_fill, {"gpu": 45, "dry": 8}),
    Part("cogvideox", part_cogvideox, {"gpu": 40, "dry": 8}),
    Part("evaluate", part_evaluate, {"gpu": 40, "dry": 15}),
    Part("annotate", part_annotate, {"gpu": 70, "dry": 40}),  # dry: Ray's start, ~20 s
    Part("generative", part_generative, {"gpu": 120, "dry": 15}),
    Part("models", part_models, {"gpu": 150, "dry": 25}),
)


def part_process(part: Part, args, results: Path, deadline: float, log: Path) -> None:
    """A part in a forked process of its own session (so that it and whatever it starts,
    Ray's processes included, can be stopped together), its output into `log`."""
    import traceback

    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 0
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{part.name}-") as tmp:
            part.run(Context(args.dry_run, args.device_name, args.peak_tflops, deadline,
                             results, Path(args.tiny_models), Path(tmp)))
    except BaseException:  # noqa: BLE001 - reported in the part's status, by the parent
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no atexit handlers of the parent's imports in a forked child


def preload() -> None:
    """The heavy imports every part shares, once, before the parts are forked: on 2 busy
    cores each costs ~11 CPU-s (measured), which six fresh processes would pay six times.
    Nothing here may touch CUDA (the driver's state does not survive a fork): with
    PYTORCH_NVML_BASED_CUDA_CHECK=1 a library's `torch.cuda.is_available()` asks NVML."""
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    import diffusers  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from diffusers import FluxTransformer2DModel  # noqa: F401
    from transformers import CLIPModel, Dinov2Model  # noqa: F401

    if torch.cuda.is_initialized():
        raise RuntimeError("bench_gpu: an import initialised CUDA before the parts were forked")


def read_lines(path: Path) -> dict:
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed part may be cut short
                continue
            values[row["name"]] = row["value"]
    return values


def stop(pid: int) -> None:
    """SIGKILL a part's process, its descendants and its session."""
    import psutil

    try:
        family = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        family = []
    for proc in family:
        try:
            proc.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_part(part: Part, args, budget: float, logs: Path) -> dict:
    import multiprocessing

    results, log = logs / f"{part.name}.jsonl", logs / f"{part.name}.log"
    results.unlink(missing_ok=True)
    start = time.time()
    proc = multiprocessing.get_context("fork").Process(
        target=part_process, args=(part, args, results, start + budget, log))
    proc.start()
    proc.join(budget)
    if proc.is_alive():
        stop(proc.pid)
        proc.join()
        status = f"stopped at its {budget:.0f} s budget; the lines it wrote are kept"
    else:
        stop(proc.pid)  # what it left running (a Ray it did not shut down)
        status = "ok" if proc.exitcode == 0 else f"failed (exit {proc.exitcode}): {last_line(log)}"
    return {"status": status, "budget_s": budget, "seconds": round(time.time() - start, 1),
            "log": str(log), "values": read_lines(results)}


def last_line(log: Path) -> str:
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


def run_all(args, start: float) -> dict:
    kind = "dry" if args.dry_run else "gpu"
    total = args.budget or TOTAL_BUDGET_S[kind] * args.budget_scale
    chosen = [p for p in PARTS if not args.parts or p.name in args.parts]
    logs = Path(args.json).with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    parts, preloaded = {}, False
    banked = 0.0  # what the parts before left of their budgets: the next one may use it
    for part in chosen:
        own = part.budget_s[kind] * args.budget_scale
        left = total - (time.time() - start)
        budget = min(left, own + banked)
        if own > left:
            parts[part.name] = {"status": f"skipped: its budget is {own:.0f} s and "
                                          f"{max(0.0, left):.0f} s of the {total:.0f} s total "
                                          "are left", "budget_s": own, "values": {}}
        else:
            if not preloaded:  # not before a part will run: a run that skips all stays quick
                preload()
                preloaded = True
            parts[part.name] = run_part(part, args, budget, logs)
            banked = max(0.0, budget - parts[part.name]["seconds"])
        print(f"bench_gpu: {part.name}: {parts[part.name]['status']}", file=sys.stderr,
              flush=True)
    return {"device": args.device_name, "dry_run": args.dry_run,
            "peak_bf16_tflops": args.peak_tflops, "total_budget_s": total,
            "seconds": round(time.time() - start, 1), "parts": parts}


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(report: dict) -> list[str]:
    lines = [f"device: {report['device']}", f"dry_run: {report['dry_run']}",
             f"peak_bf16_tflops: {fmt(report['peak_bf16_tflops'])}",
             f"seconds: {fmt(report['seconds'])} (budget {fmt(report['total_budget_s'])})"]
    for name, part in report["parts"].items():
        lines.append(f"{name}.status: {part['status']}")
        if "seconds" in part:
            lines.append(f"{name}.seconds: {fmt(part['seconds'])} (budget {fmt(part['budget_s'])})")
        lines += [f"{name}.{k}: {fmt(v)}" for k, v in part["values"].items()]
    return lines


CUDA_PROBE = ("import torch; print(torch.cuda.get_device_name(0) "
              "if torch.cuda.is_available() else '')")


def cuda_device() -> tuple[str | None, str]:
    """(the device name or None, why not), asked in a process of its own: the parts are
    forked from this one, and a CUDA context made here would not survive the fork."""
    proc = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        return None, f"torch failed to start ({lines[-1]})"
    name = proc.stdout.strip()
    return (name, "") if name else (None, "no CUDA device (torch.cuda.is_available() is False)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script")
    p.add_argument("--json", default=str(DEFAULT_JSON), help="where the results go")
    p.add_argument("--parts", default="", help=f"comma-separated, of {[x.name for x in PARTS]}")
    p.add_argument("--budget", type=float, default=None,
                   help=f"total seconds (default {TOTAL_BUDGET_S['gpu']:.0f}, dry run "
                        f"{TOTAL_BUDGET_S['dry']:.0f})")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiplies every part's budget (a slower card, a busy CPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the card's dense bf16 peak (default: benchmarks/gpu_info.py's table)")
    p.add_argument("--tiny-models", default=str(ROOT / "build" / "tiny-models"),
                   help="dry run: where the tiny annotator models are (built if missing)")
    p.add_argument("--readme-table", metavar="JSON",
                   help="print the README's GPU column from a results JSON, and exit")
    args = p.parse_args(argv)
    start = time.time()  # the total budget counts the CUDA check and the shared imports
    if args.readme_table:
        from bench_gpu_readme import render

        print(render(json.loads(Path(args.readme_table).read_text())))
        return 0
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(args.parts) - {x.name for x in PARTS})
    if unknown:
        p.error(f"unknown part(s) {unknown}; known: {[x.name for x in PARTS]}")
    if args.dry_run:
        args.device_name = "cpu (dry run: tiny models)"
    else:
        name, why = cuda_device()
        if name is None:
            print(f"bench_gpu: {why}; it measures a GPU. Run it on a CUDA machine, or "
                  "--dry-run to check the script on the CPU", file=sys.stderr)
            return 2
        args.device_name = name
        if args.peak_tflops is None:
            from gpu_info import bf16_peak_tflops

            args.peak_tflops = bf16_peak_tflops(name)
    os.environ.setdefault("TQDM_DISABLE", "1")
    report = run_all(args, start)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.json)  # never a half-written results file under its name
    print("\n".join(table(report)))
    print(f"bench_gpu: results in {args.json}, part logs in {Path(args.json).with_suffix('.logs')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
