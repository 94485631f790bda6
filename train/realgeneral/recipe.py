"""RealGeneral two-frame LoRA on CogVideoX1.5 (arXiv 2503.10406), read top to bottom.

    python -m train.cogvideox --config configs/train/cogvideox.yaml [key=value ...]
    accelerate launch -m train.cogvideox --config configs/train/cogvideox.yaml

build (T5, VAE, transformer + UCE / SC-AdaLN / FCD, LoRA) -> data (`TwoFramePair`s) ->
loop (v-prediction loss on the target frame only) -> save (checkpoints, final adapter).

Rerunning the same command resumes from the newest checkpoint in `out_dir`; SIGTERM saves
one and exits. Checkpointing, config and logging are the code `train.fill` uses.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
import yaml

from graph200k.pair import TwoFramePair
from train.common.checkpoint import CheckpointManager, SigtermHandler
from train.common.config import TrainConfig, parse_args, to_dict
from train.common.metrics import MetricLogger
from train.common.nan_guard import check_finite
from train.realgeneral.encoders import encode_images, encode_text, load_components, tokenize
from train.realgeneral.model import RealGeneralModel
from train.common.validation import ValidationConfig, Validator, enabled, select_tasks, stream_tasks_setup

# ----------------------------------------------------------------------------- config
# Sections and key names are train.fill's (model / lora / optim / data / train), so the same
# override (`train.max_steps=10`, `optim.lr=3e-4`) means the same thing in both recipes.
@dataclass
class ModelConfig:
    pretrained: str = "THUDM/CogVideoX1.5-5B"  # hub id or local diffusers folder
    revision: str | None = None
    dtype: str = "bfloat16"  # frozen transformer / VAE / T5; trainable weights stay float32
    gradient_checkpointing: bool = True
    build_tiny: bool = False  # build a tiny random model at `pretrained` first if it is missing


@dataclass
class RealGeneralConfig:
    mask_variant: str = "A"  # FCD: A (the paper's), B, C, none (ablations)
    # UCE task-bias vocabulary; null = every pair task the data source can yield.
    tasks: list[str] | None = None


@dataclass
class LoraSection:
    rank: int = 256
    alpha: float = 256.0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # RealGeneral's
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0


@dataclass
class DataConfig:
    source: str = "shards"  # annotated Graph200K shards through graph200k.stream.GridStream(mode="pair")
    shards: str = "shards/graph200k"
    manifest: str | None = None  # null: built by scanning the shards
    res: int = 512  # square side of both frames; the paper trains at 512^2
    seed: int = 0
    families: list[str] | None = None
    tasks_config: str = "configs/tasks.yaml"
    micro_batch_size: int = 1


@dataclass
class CogVideoXConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    realgeneral: RealGeneralConfig = field(default_factory=RealGeneralConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/cogvideox"))
    validation: ValidationConfig = field(default_factory=ValidationConfig)


# ---------------------------------------------------------------------------------- data
def pair_source(data: DataConfig, rank: int, world_size: int) -> Iterable[TwoFramePair]:
    """The recipe's only data entry point: this process's stream of `TwoFramePair`s."""
    if data.source != "shards":
        raise ValueError(f"data.source must be 'shards' (annotated Graph200K shards), got {data.source!r}")
    from graph200k.stream import PAIR, GridStream  # imported only when used

    # The stream splits its task sequence across ranks itself (DDP/FSDP).
    return GridStream(
        shards=data.shards, manifest=data.manifest, res=data.res, seed=data.seed, families=data.families,
        tasks_config=data.tasks_config, mode=PAIR, rank=rank, world_size=world_size,
    )


def task_vocabulary(cfg: CogVideoXConfig) -> list[str]:
    """UCE's task names: the config's list, else every pair task of the configured families."""
    if cfg.realgeneral.tasks:
        return list(cfg.realgeneral.tasks)
    from graph200k.reader import pair_task_name
    from graph200k.stream import pair_config
    from graph200k.tasks import TaskConfig

    config = pair_config(TaskConfig.load(cfg.data.tasks_config))
    families = cfg.data.families or list(config.families)
    return sorted({pair_task_name(f, v.nodes, len(config.families[f]))
                   for f in families if f in config.families for v in config.families[f]})


# ---------------------------------------------------------------------------------- loss
def diffusion_loss(parts: dict, model: RealGeneralModel, pairs: list[TwoFramePair], generator=None) -> torch.Tensor:
    """v-prediction MSE on the target frame; the condition frame stays clean (RealGeneral §3.1).

    CogVideoX's own finetuning weighs the x0 error by 1 / (1 - alpha_bar_t); with
    v-prediction that is exactly the MSE on v, which is what this computes.
    """
    tokenizer, scheduler = parts["tokenizer"], parts["scheduler"]
    core = model.module if hasattr(model, "module") else model
    device = parts["vae"].device
    ids = tokenize(tokenizer, [p.prompt for p in pairs], core.transformer.config.max_text_seq_length)
    text = encode_text(parts["text_encoder"], ids)
    keyword = core.uce.keyword_mask(tokenizer, ids, [p.subject for p in pairs]).to(device)
    task_ids = core.uce.task_ids([p.task for p in pairs], device=device)
    condition = encode_images(parts["vae"], [p.condition for p in pairs], generator)
    target = encode_images(parts["vae"], [p.target for p in pairs], generator)

    noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(pairs),), generator=generator, device=device)
    noisy = scheduler.add_noise(target, noise, steps)
    velocity = scheduler.get_velocity(target, noise, steps)
    prediction = model(condition, noisy, text, steps, keyword, task_ids)
    return F.mse_loss(prediction.float(), velocity.float())


# --------------------------------------------------------------------------------- build
def build(cfg: CogVideoXConfig, device="cpu", tasks: list[str] | None = None) -> tuple[dict, RealGeneralModel]:
    """Frozen T5 / VAE / scheduler + the RealGeneral transformer with LoRA, from `model.pretrained`."""
    m = cfg.model
    parts = load_components(m.pretrained, dtype=getattr(torch, m.dtype), device=device, revision=m.revision)
    # The scheduler's tables live where the noise is drawn.
    parts["scheduler"].alphas_cumprod = parts["scheduler"].alphas_cumprod.to(device)
    model = RealGeneralModel(parts.pop("transformer"), tasks or task_vocabulary(cfg), cfg.realgeneral.mask_variant)
    model.add_lora(cfg.lora.rank, cfg.lora.alpha)
    for param in model.parameters():
        if param.requires_grad:  # LoRA + UCE train in float32 under bf16 autocast
            param.data = param.data.float()
    if m.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
    return parts, model


def train(cfg: CogVideoXConfig, pairs: Iterable[TwoFramePair] | None = None) -> dict:
    """Run (or resume) the recipe; returns {"model", "parts", "losses", "step", "stopped"}.

    `pairs` replaces the configured data source (tests); a resumed run continues it from its
    `load_state_dict` when it has one, else it must yield the same sequence on every call.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator(mixed_precision=cfg.train.mixed_precision)
    per_step = cfg.data.micro_batch_size * acc.num_processes
    if cfg.train.global_batch_size % per_step:
        raise ValueError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                         f"data.micro_batch_size x processes = {per_step}")
    accum = cfg.train.global_batch_size // per_step
    set_seed(cfg.train.seed + acc.process_index)
    out_dir = Path(cfg.train.out_dir)

    if cfg.model.build_tiny and not (Path(cfg.model.pretrained) / "model_index.json").exists():
        if acc.is_main_process:
            from train.realgeneral.tiny import save_tiny

            save_tiny(cfg.model.pretrained, seed=cfg.train.seed)
        acc.wait_for_everyone()

    parts, model = build(cfg, acc.device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = o.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    model, optimizer = acc.prepare(model, optimizer)
    core: RealGeneralModel = acc.unwrap_model(model)

    ckpt = CheckpointManager(out_dir, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, acc.process_index,
                             acc.num_processes, acc.wait_for_everyone,
                             shard_optimizer=acc.distributed_type.name == "FSDP")
    start, consumed, source_state = 0, 0, None
    if (latest := ckpt.latest()) is not None:
        resumed = ckpt.load(latest, optimizer, lr_scheduler)  # also restores this rank's RNG
        core.load_trainable_state_dict({k: v.to(acc.device) for k, v in resumed.trainable.items()})
        start, consumed = resumed.step, resumed.data_state["pairs_consumed"]
        source_state = resumed.data_state.get("source")
        core.uce.counts.update(resumed.extra.get("uce_counts", {}))
        acc.print(f"resumed from {latest} (step {start})")
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ------------------------------------------------------------------------- data
    # A resumed run sees the pairs the uninterrupted run would have: GridStream starts at the
    # checkpointed position (reading nothing before it); a plain iterable is fast-forwarded.
    source = pair_source(cfg.data, acc.process_index, acc.num_processes) if pairs is None else pairs
    if source_state is not None and hasattr(source, "load_state_dict"):
        source.load_state_dict(source_state)
        stream = iter(source)
    else:
        stream = itertools.islice(iter(source), consumed, None)

    def data_state() -> dict:
        return {"pairs_consumed": consumed,
                "source": source.state_dict() if hasattr(source, "state_dict") else None}

    def next_batch() -> list[TwoFramePair]:
        batch = list(itertools.islice(stream, cfg.data.micro_batch_size))
        if len(batch) < cfg.data.micro_batch_size:
            raise RuntimeError(f"the pair source ran out after {consumed + len(batch)} pairs")
        return batch

    # ------------------------------------------------------------------------- loop
    log = MetricLogger(out_dir / "logs", cfg.train.max_steps, start, acc.is_main_process, cfg.train.tensorboard,
                       cfg.train.wandb_project, to_dict(cfg))
    latent_side = cfg.data.res // 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    image_tokens = 2 * core.tokens_per_image(latent_side, latent_side)
    tokens_per_pair = core.transformer.config.max_text_seq_length + image_tokens
    validate = cogvideox_validator(cfg, acc, parts, core, log, source)
    if validate is not None and validate.pending(start):  # preempted before that step's images were written
        validate(start, model)
    losses: list[float] = []
    model.train()
    with SigtermHandler() as sigterm:
        for step in range(start + 1, cfg.train.max_steps + 1):
            t0 = time.perf_counter()
            step_loss, tasks = torch.zeros((), device=acc.device), []
            for micro in range(accum):
                batch = next_batch()
                consumed += len(batch)
                tasks += [p.task for p in batch]
                # DDP: all-reduce gradients only on the last micro-batch of the step.
                sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(model)
                with sync, acc.autocast():
                    loss = diffusion_loss(parts, model, batch)
                    acc.backward(loss / accum)
                step_loss += loss.detach() / accum

            step_loss = acc.reduce(step_loss, "mean")
            # Before the update: NaN weights never reach a checkpoint; the last one stays good.
            check_finite(step_loss, step, tasks, ckpt.latest())
            grad_norm = acc.clip_grad_norm_(params, o.grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            losses.append(float(step_loss))
            step_time = time.perf_counter() - t0
            images = validate(step, model) if validate and validate.due(step) and not sigterm.requested else {}
            log.log(step, loss=float(step_loss), lr=lr_scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                    samples=cfg.train.global_batch_size, tokens=cfg.train.global_batch_size * tokens_per_pair,
                    step_time=step_time, keyword_missing=core.uce.counts["keyword_missing"],
                    pairs_seen=core.uce.counts["samples"], **images)
            stop = _any_rank(acc, sigterm.requested)
            if ckpt.should_save(step, stop) or step == cfg.train.max_steps:
                ckpt.save(step, core.trainable_state_dict(), optimizer, lr_scheduler,
                          data_state(), {"uce_counts": dict(core.uce.counts)})
            if stop:
                log.write(f"SIGTERM: saved step {step}; rerun the same command to resume")
                break

    # ------------------------------------------------------------------------- save
    stopped = bool(losses) and start + len(losses) < cfg.train.max_steps
    if acc.is_main_process and not stopped:
        core.save_adapter(out_dir / "lora")
        log.write(f"adapter: {out_dir / 'lora'} (subject keyword missing in "
                  f"{core.uce.counts['keyword_missing']} of {core.uce.counts['samples']} prompts)")
    log.close()
    acc.wait_for_everyone()
    return {"model": core, "parts": parts, "losses": losses, "step": start + len(losses), "stopped": stopped}


def cogvideox_validator(cfg: CogVideoXConfig, acc, parts: dict, core: RealGeneralModel, log,
                        source=None) -> Validator | None:
    """The fixed validation pairs (condition -> target), generated by train.infer_cogvideox on the
    modules this run already holds; written as condition | generated target."""
    v = cfg.validation
    if not enabled(v, acc, log.write):
        return None
    import numpy as np

    from graph200k.reader import SampleReader, pair_task_name
    from train.realgeneral.infer import generate

    manifest, config = stream_tasks_setup(cfg.data, source, pairs=True)
    tasks = select_tasks(v, manifest, config, cfg.data.families, log.write)
    reader, res = SampleReader(cfg.data.shards, manifest), v.res or cfg.data.res
    # Its own scheduler: set_timesteps must not touch the one the loss draws timesteps from.
    scheduler = type(parts["scheduler"]).from_config(parts["scheduler"].config)
    inference = {**parts, "scheduler": scheduler}

    def build_pair(task):
        name = pair_task_name(task.family, task.nodes, len(config.families[task.family]))
        return reader.pair(task, res, name) if name in core.uce.tasks else None  # no UCE bias for it: skip

    def run(pair, seed):
        counts = dict(core.uce.counts)  # validation prompts are not training samples
        with acc.autocast():
            target = generate(inference, core, pair.condition, pair.prompt, pair.subject, pair.task, v.steps,
                              v.guidance, seed)
        core.uce.counts.clear()
        core.uce.counts.update(counts)
        return np.concatenate([pair.condition, target], axis=1), target

    return Validator(v, cfg.train.out_dir, tasks, build_pair, run, log)


def _any_rank(accelerator, flag: bool) -> bool:
    """SIGTERM reaches ranks at different moments; all must stop at the same step."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def main(argv=None) -> None:
    cfg = parse_args(CogVideoXConfig, argv, description=__doc__.splitlines()[0])
    result = train(cfg)
    print(f"done: step {result['step']}" + (" (stopped by SIGTERM)" if result["stopped"] else ""))


if __name__ == "__main__":
    main()
