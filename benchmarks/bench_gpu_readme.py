"""The README benchmark table's GPU column, from a `bench_gpu.py` results JSON.

    python benchmarks/bench_gpu.py --readme-table build/bench-gpu.json

One row per figure the README states for a GPU, with the card's name in the column header;
a figure the run did not measure says why (the part's skip or stop reason, or the item's).
"""

from __future__ import annotations

DENSE = ("hed", "mlsd", "openpose", "depth", "normal", "uniformer")
GENERATIVE = ("instantstyle", "reduxstyle", "filledit", "depthedit")


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else str(value)


def _f(value, spec: str, scale: float = 1.0) -> str:
    """A number formatted, or "n/a" (null in the JSON: no CUDA memory figure on a CPU)."""
    return format(value * scale, spec) if isinstance(value, (int, float)) else "n/a"


def _why_missing(part: dict, item: str | None) -> str:
    values = part.get("values", {})
    if item and f"{item}.skipped" in values:
        return f"not measured: {values[f'{item}.skipped']}"
    if part.get("status", "ok") != "ok":
        return f"not measured: {part['status']}"
    return "not measured"


def _ratio(part: dict, item: str | None, ratio: str, fast: str, slow: str, unit: str) -> str:
    v = part.get("values", {})
    if ratio not in v:
        return _why_missing(part, item)
    rates = f" ({_num(v[fast])} vs {_num(v[slow])} {unit})" if fast in v and slow in v else ""
    return f"{_f(v[ratio], '.2f')}×{rates}"


def rows(report: dict) -> list[tuple[str, str, str, str]]:
    parts = report["parts"]
    empty = {"status": "not in this run", "values": {}}
    models, gen, ev, fill, cog, ann = (parts.get(k, empty) for k in (
        "models", "generative", "evaluate", "fill", "cogvideox", "annotate"))
    mv = models.get("values", {})
    out = []
    bench = f"`bench_models` ({mv.get('dtype', 'bf16')}, batch {mv.get('batch_size', '?')}, 512²)"
    for s in DENSE:
        out.append((bench, f"{s}: our stage / the per-image way",
                    _ratio(models, s, f"ratio_stage_vs_per_image_{s}", f"{s}.stage_images_per_s",
                           f"{s}.per_image_images_per_s", "images/s"), "≥ 3"))
        bench = ""
    out.append(("", "sam2_mask (hiera-large, 32×32 points): our stage / the generator",
                _ratio(models, "sam2_mask", "ratio_stage_vs_per_image_sam2_mask",
                       "sam2_mask_images_per_s", "sam2_mask_per_image_images_per_s", "images/s"),
                "≥ 3"))
    label = "rmbg" if "ratio_stage_vs_per_image_rmbg" in mv else "rmbg_standin"
    out.append(("", f"{label} (1024²): our stage / the model card's loop",
                _ratio(models, "rmbg", f"ratio_stage_vs_per_image_{label}", f"{label}_images_per_s",
                       f"{label}_per_image_images_per_s", "images/s"), "≥ 3"))
    out.append(("", "Qwen2-VL-7B shapes: batched / one prompt at a time",
                _ratio(models, "vlm", "ratio_vlm_batched_vs_one_at_a_time",
                       "vlm_batched_tokens_per_s", "vlm_one_at_a_time_tokens_per_s", "tokens/s"),
                "—"))
    bench = "`bench_generative` (full size, 1024², random weights)"
    for s in GENERATIVE:
        out.append((bench, f"{s}: batched / one sample at a time",
                    _ratio(gen, s, f"ratio_gpu_batched_vs_loop_{s}", f"gpu.{s}.batched_images_per_s",
                           f"gpu.{s}.loop_images_per_s", "images/s"), "≥ 1.5"))
        bench = ""
    out.append(("`bench_evaluate` (real architectures, 64 images, fp16)",
                "batched / one image at a time",
                _ratio(ev, None, "ratio_batched_vs_one_at_a_time", "batched_images_per_s",
                       "one_at_a_time_images_per_s", "images/s"), "≥ 3"))
    fv = fill.get("values", {})
    if "mb2.tokens_per_s" in fv:
        peak = fv.get("peak_tflops")
        figure = (f"{_f(fv['mb2.tokens_per_s'], '.0f')} tokens/s, MFU "
                  f"{_f(fv.get('mb2.mfu'), '.1f', 100)} % (of {_num(peak, 4)} TFLOP/s), peak "
                  f"{_f(fv.get('mb2.peak_mem_gb'), '.1f')} GB, "
                  f"{_f(fv.get('mb2.step_time_s'), '.2f')} s a step")
    else:
        figure = _why_missing(fill, None)
    out.append(("`bench_fill` (FLUX.1-Fill 12B + LoRA 256, checkpointing)",
                "step at 384², micro-batch 2", figure, "—"))
    cv = cog.get("values", {})
    if "ratio_fcd_A_vs_base" in cv:
        figure = (f"{_f(cv['ratio_fcd_A_vs_base'], '.2f')}× ({_f(cv.get('fcd_A.step_s'), '.2f')} "
                  f"vs {_f(cv.get('base.step_s'), '.2f')} s a step); MFU "
                  f"{_f(cv.get('fcd_A.mfu'), '.1f', 100)} %, peak "
                  f"{_f(cv.get('fcd_A.peak_memory_gb'), '.1f')} GB")
    else:
        figure = _why_missing(cog, None)
    out.append(("`bench_cogvideox` (CogVideoX1.5-5B + LoRA 256, 512²)",
                "step with SC-AdaLN + FCD A / unmodified transformer", figure, "≤ 1.15"))
    av = ann.get("values", {})
    if "images_per_s" in av:
        util = (f"GPU busy {_f(av['gpu_util_mean_pct'], '.0f')} % on average (max "
                f"{_f(av.get('gpu_util_max_pct'), '.0f')} %)" if "gpu_util_mean_pct" in av
                else f"GPU utilisation {av.get('gpu_util', 'not sampled')}")
        figure = (f"{_f(av['images_per_s'], '.1f')} images/s ({av.get('samples')} samples, "
                  f"{_f(av.get('run_seconds'), '.0f')} s, Ray's start and the models' loads included); {util}")
    else:
        figure = _why_missing(ann, None)
    out.append((f"`pipelines.annotate` ({av.get('stages', 'depth,uniformer')} on Ray)",
                "end to end", figure, "—"))
    return out


def render(report: dict) -> str:
    column = f"GPU: {report['device']}"
    lines = [f"| benchmark | figure | {column} | target |", "|---|---|---|---|"]
    lines += [f"| {b} | {f} | {v} | {t} |" for b, f, v, t in rows(report)]
    lines.append("")
    lines.append(f"`make bench-gpu`: {report['seconds']:.0f} s of its {report['total_budget_s']:.0f} s "
                 "budget" + (" (dry run: tiny models on the CPU, not GPU figures)"
                             if report.get("dry_run") else ""))
    return "\n".join(lines)
