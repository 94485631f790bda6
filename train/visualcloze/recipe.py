"""FLUX.1-Fill-dev LoRA on visual-cloze grids (VisualCloze, arXiv 2504.07960).

    python -m train.fill --config configs/train/fill-tiny.yaml [key=value ...]
    accelerate launch --config_file configs/accelerate/8gpu-fsdp.yaml -m train.fill --config configs/train/fill.yaml

Read top to bottom: config → build (models, LoRA, optimizer, resume) → data → loop → save.
Rerunning the same command resumes from the newest checkpoint in `train.out_dir`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from train.common.checkpoint import CheckpointManager, SigtermHandler
from train.common.config import TrainConfig, parse_args, to_dict
from train.common.feature_cache import FeatureCache
from train.visualcloze.inputs import GridLatents, collate, encode_grid, encode_prompts, grid_tokens
from train.visualcloze.model import (PerSampleRopeAttnProcessor, add_lora, load_lora_state_dict, load_text_encoders,
                              load_transformer, load_vae, lora_state_dict, predict_velocity, sample_timesteps,
                              torch_dtype, velocity_loss)
from train.common.metrics import MetricLogger
from train.common.nan_guard import check_finite
from train.visualcloze.tiny import TinyFillConfig
from train.common.validation import ValidationConfig, Validator, enabled, select_tasks, stream_tasks_setup


# ----------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    pretrained: str = "black-forest-labs/FLUX.1-Fill-dev"  # hub id or local diffusers folder
    revision: str | None = None
    dtype: str = "bfloat16"  # frozen transformer / VAE / text encoders
    gradient_checkpointing: bool = True
    max_sequence_length: int = 512  # T5 tokens
    build_tiny: bool = False  # build a tiny random model at `pretrained` first if it is missing


@dataclass
class LoraSection:
    rank: int = 256
    alpha: float = 256.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 2.0
    warmup_steps: int = 0


@dataclass
class ObjectiveConfig:
    timesteps: str = "lognorm"  # t = sigmoid(N(0, 1))
    # kohya's flux_shift (mu 0.5 @ 256 → 1.15 @ 4096 tokens). VisualCloze's released trainer
    # effectively runs without it (an argparse clash), hence False by default.
    time_shift: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    loss_on: str = "grid"  # "grid": every image token (VisualCloze's trainer) | "masked_cell"
    guidance: float = 1.0


@dataclass
class DataConfig:
    source: str = "shards"  # annotated Graph200K shards through graph200k.stream.GridStream
    shards: str = "shards/graph200k"
    manifest: str | None = None  # null: built by scanning the shards
    res: int = 384
    seed: int = 0
    families: list[str] | None = None
    tasks_config: str = "configs/tasks.yaml"
    micro_batch_size: int = 1
    max_tokens: int = 0  # grids with more image tokens are skipped and counted; 0 = no limit
    cache_dir: str | None = None  # cache VAE latents + text embeddings here (safetensors)


@dataclass
class FillConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/fill"))
    tiny: TinyFillConfig = field(default_factory=TinyFillConfig)  # used only with model.build_tiny
    validation: ValidationConfig = field(default_factory=ValidationConfig)


class Encoders:
    """VAE + text encoders, loaded on first use: with a warm cache they are never loaded."""

    def __init__(self, cfg: FillConfig, device):
        self.cfg, self.device = cfg, device
        self._vae = self._text = None
        cache = cfg.data.cache_dir
        self.latent_cache = FeatureCache(cache, "latents") if cache else None
        self.text_cache = FeatureCache(cache, "text") if cache else None

    def vae(self):
        if self._vae is None:
            m = self.cfg.model
            self._vae = load_vae(m.pretrained, torch_dtype(m.dtype), m.revision).to(self.device).eval()
            self._vae.requires_grad_(False)
        return self._vae

    def latents(self, grid) -> GridLatents:
        if self.latent_cache is None:
            return encode_grid(grid, self.vae())
        key = FeatureCache.key(self.cfg.model.pretrained, *grid.rows, *grid.masks, grid.mask_row, grid.mask_col)
        hit = self.latent_cache.get(key)
        if hit is not None:
            return GridLatents.from_dict(hit)
        out = encode_grid(grid, self.vae())
        self.latent_cache.put(key, out.to_dict())
        return out

    def text_models(self):
        """(clip tokenizer, CLIP, t5 tokenizer, T5), loaded once."""
        if self._text is None:
            m = self.cfg.model
            tok, clip, tok2, t5 = load_text_encoders(m.pretrained, torch_dtype(m.dtype), m.revision)
            self._text = (tok, clip.to(self.device), tok2, t5.to(self.device))
        return self._text

    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.cfg.model
        rows = []
        for p in prompts:
            key = FeatureCache.key(m.pretrained, m.max_sequence_length, p) if self.text_cache else None
            hit = self.text_cache.get(key) if key else None
            if hit is None:
                t5_embeds, pooled = encode_prompts([p], *self.text_models(), max_sequence_length=m.max_sequence_length)
                hit = {"text": t5_embeds[0], "pooled": pooled[0]}
                if key:
                    self.text_cache.put(key, hit)
            rows.append(hit)
        return torch.stack([r["text"] for r in rows]), torch.stack([r["pooled"] for r in rows])


def grid_source(data_cfg: DataConfig, rank: int = 0, world_size: int = 1):
    """The recipe's only data entry point: this process's stream of graph200k.grid.Grid."""
    if data_cfg.source != "shards":
        raise ValueError(f"data.source must be 'shards' (annotated Graph200K shards), got {data_cfg.source!r}")
    from graph200k.stream import GRID, GridStream

    # The stream splits its task sequence across ranks itself (DDP/FSDP).
    return GridStream(shards=data_cfg.shards, manifest=data_cfg.manifest, res=data_cfg.res, seed=data_cfg.seed,
                      families=data_cfg.families, tasks_config=data_cfg.tasks_config, mode=GRID, rank=rank,
                      world_size=world_size)


class MicroBatches:
    """Micro-batches of Grids from an iterable; over-budget grids are skipped and counted.

    `state()` holds the counts and the source's own position (GridStream.state_dict): a
    resumed run starts the stream there without reading the grids already used. A source
    without `load_state_dict` (a plain iterable) is fast-forwarded by the grids consumed.
    """

    def __init__(self, source, size: int, max_tokens: int, scale: int, state: dict | None = None):
        self.source, self.size, self.max_tokens, self.scale = source, size, max_tokens, scale
        self.consumed, self.skipped = 0, 0
        if state and hasattr(source, "load_state_dict") and state.get("source") is not None:
            source.load_state_dict(state["source"])
            self.it = iter(source)
            self.consumed, self.skipped = state["consumed"], state["skipped"]
        else:
            self.it = iter(source)
            for _ in range((state or {}).get("consumed", 0)):
                next(self.it)
            self.consumed, self.skipped = (state or {}).get("consumed", 0), (state or {}).get("skipped", 0)

    def next(self) -> list:
        out = []
        while len(out) < self.size:
            grid = next(self.it)
            self.consumed += 1
            if self.max_tokens and grid_tokens(grid, self.scale) > self.max_tokens:
                self.skipped += 1
                continue
            out.append(grid)
        return out

    def state(self) -> dict:
        src = self.source.state_dict() if hasattr(self.source, "state_dict") else None
        return {"consumed": self.consumed, "skipped": self.skipped, "source": src}


def train(cfg: FillConfig) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # ------------------------------------------------------------------------- build
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision)
    per_step = cfg.data.micro_batch_size * acc.num_processes
    if cfg.train.global_batch_size % per_step:
        raise ValueError(f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                         f"data.micro_batch_size × processes = {per_step}")
    accum = cfg.train.global_batch_size // per_step
    if cfg.objective.loss_on not in ("grid", "masked_cell"):
        raise ValueError(f"objective.loss_on must be 'grid' or 'masked_cell', got {cfg.objective.loss_on!r}")
    set_seed(cfg.train.seed + acc.process_index)
    out_dir = Path(cfg.train.out_dir)

    if cfg.model.build_tiny and not (Path(cfg.model.pretrained) / "model_index.json").exists():
        if acc.is_main_process:
            from train.visualcloze.tiny import build_tiny_fill

            build_tiny_fill(cfg.model.pretrained, cfg.tiny)
        acc.wait_for_everyone()

    transformer = load_transformer(cfg.model.pretrained, torch_dtype(cfg.model.dtype), cfg.model.revision)
    params = add_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules, cfg.lora.dropout)
    transformer.set_attn_processor(PerSampleRopeAttnProcessor())
    if cfg.model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    encoders = Encoders(cfg, acc.device)
    scale = _vae_scale(cfg)  # from the VAE's config: no VAE weights needed when latents are cached

    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    warmup = cfg.optim.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    transformer, optimizer = acc.prepare(transformer, optimizer)

    ckpt = CheckpointManager(out_dir, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, acc.process_index,
                             acc.num_processes, acc.wait_for_everyone,
                             shard_optimizer=acc.distributed_type.name == "FSDP")
    start, data_state = 0, None
    if (latest := ckpt.latest()) is not None:
        resumed = ckpt.load(latest, optimizer, lr_scheduler)
        load_lora_state_dict(acc.unwrap_model(transformer), resumed.trainable)
        start, data_state = resumed.step, resumed.data_state
        acc.print(f"resumed from {latest} (step {start})")
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ------------------------------------------------------------------------- data
    source = grid_source(cfg.data, acc.process_index, acc.num_processes)
    batches = MicroBatches(source, cfg.data.micro_batch_size, cfg.data.max_tokens, scale, data_state)

    # ------------------------------------------------------------------------- loop
    log = MetricLogger(out_dir / "logs", cfg.train.max_steps, start, acc.is_main_process, cfg.train.tensorboard,
                       cfg.train.wandb_project, to_dict(cfg))
    validate = fill_validator(cfg, acc, transformer, encoders, scale, log, source)
    if validate is not None and validate.pending(start):  # preempted before that step's images were written
        validate(start, transformer)
    obj = cfg.objective
    losses = []
    transformer.train()
    with SigtermHandler() as sigterm:
        for step in range(start + 1, cfg.train.max_steps + 1):
            t0 = time.perf_counter()
            step_loss, tokens, task_ids = torch.zeros((), device=acc.device), 0, []
            for micro in range(accum):
                grids = batches.next()
                text, pooled = encoders.text([g.prompt for g in grids])
                batch = collate([encoders.latents(g) for g in grids], text, pooled, [g.task_id for g in grids])
                task_ids += batch.task_ids
                x0 = batch.latents.to(acc.device)
                t = sample_timesteps(x0.shape[0], batch.num_tokens, obj.time_shift, base_shift=obj.base_shift,
                                     max_shift=obj.max_shift).to(acc.device)
                noise = torch.randn_like(x0)
                noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise  # rectified flow
                # DDP: all-reduce gradients only on the last micro-batch of the step.
                sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(transformer)
                with sync, acc.autocast():
                    pred = predict_velocity(transformer, batch, noisy, t, obj.guidance)
                    region = batch.valid if obj.loss_on == "grid" else batch.cell & batch.valid
                    loss = velocity_loss(pred, noise, x0, region.to(acc.device))
                    acc.backward(loss / accum)
                step_loss += loss.detach() / accum
                tokens += int(batch.valid.sum())

            step_loss = acc.reduce(step_loss, "mean")
            # Before the update: NaN weights never reach a checkpoint; the last one stays good.
            check_finite(step_loss, step, task_ids, ckpt.latest())
            grad_norm = acc.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), "sum"))
            losses.append(float(step_loss))
            step_time = time.perf_counter() - t0
            images = validate(step, transformer) if validate and validate.due(step) and not sigterm.requested else {}
            log.log(step, loss=float(step_loss), lr=lr_scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                    samples=cfg.train.global_batch_size, tokens=tokens, step_time=step_time,
                    skipped_over_budget=batches.skipped, **images)
            last = step == cfg.train.max_steps
            if ckpt.should_save(step, sigterm.requested) or last:
                ckpt.save(step, _trainable_state(acc, transformer), optimizer, lr_scheduler,
                          batches.state(), {"skipped_over_budget": batches.skipped})
            if sigterm.requested:
                log.write(f"SIGTERM: saved step {step}; rerun the same command to resume")
                break

    # ------------------------------------------------------------------------- save
    lora_dir = out_dir / "lora"
    if not sigterm.requested:
        lora = _trainable_state(acc, transformer)  # every rank: FSDP gathers the shards
        if acc.is_main_process:
            from diffusers import FluxFillPipeline

            # diffusers' LoRA format: loads with FluxFillPipeline.load_lora_weights(lora_dir).
            FluxFillPipeline.save_lora_weights(lora_dir, transformer_lora_layers=lora, safe_serialization=True)
    log.close()
    acc.wait_for_everyone()
    return {"losses": losses, "skipped_over_budget": batches.skipped, "last_step": start + len(losses),
            "lora_dir": lora_dir, "cache_hits": encoders.latent_cache.hits if encoders.latent_cache else 0}


def fill_validator(cfg: FillConfig, acc, transformer, encoders: Encoders, scale: int, log,
                   source=None) -> Validator | None:
    """The fixed validation grids (inference sizing, masked cell unread), solved by GridFillPipeline
    on the modules this run already holds: the LoRA transformer, the VAE, the text encoders."""
    v = cfg.validation
    if not enabled(v, acc, log.write):
        return None
    from diffusers import FlowMatchEulerDiscreteScheduler

    from train.visualcloze.infer import GridFillPipeline, build_sampled_grid, solve

    manifest, config = stream_tasks_setup(cfg.data, source)
    tasks = select_tasks(v, manifest, config, cfg.data.families, log.write)
    res = v.res or cfg.data.res
    guidance = 30.0 if v.guidance is None else v.guidance  # infer_fill's default
    pipes = []

    def run(grid, seed):
        if not pipes:  # at the first validation: a cached run loads its encoders only if it gets there
            tok, clip, tok2, t5 = encoders.text_models()
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(cfg.model.pretrained, subfolder="scheduler",
                                                                        revision=cfg.model.revision)
            pipes.append(GridFillPipeline(scheduler=scheduler, vae=encoders.vae(), text_encoder=clip, tokenizer=tok,
                                          text_encoder_2=t5, tokenizer_2=tok2, transformer=acc.unwrap_model(transformer)))
            pipes[0].set_progress_bar_config(disable=True)
        with acc.autocast():
            return solve(pipes[0], grid, v.steps, guidance, seed, cfg.model.max_sequence_length)

    return Validator(v, cfg.train.out_dir, tasks,
                     lambda task: build_sampled_grid(task.to_json(), cfg.data.shards, manifest, res, 2 * scale),
                     run, log)


def _trainable_state(acc, transformer) -> dict[str, torch.Tensor]:
    """The LoRA weights as full tensors; under FSDP gathered from all ranks (collective call)."""
    if acc.distributed_type.name == "FSDP":
        return lora_state_dict(acc.unwrap_model(transformer), acc.get_state_dict(transformer))
    return lora_state_dict(acc.unwrap_model(transformer))


def _vae_scale(cfg: FillConfig) -> int:
    """VAE downscale factor from the VAE config alone (no weights): keeps cached runs VAE-free."""
    from diffusers import AutoencoderKL

    conf = AutoencoderKL.load_config(cfg.model.pretrained, subfolder="vae", revision=cfg.model.revision)
    return 2 ** (len(conf["block_out_channels"]) - 1)


def main(argv=None):
    cfg = parse_args(FillConfig, argv, description=__doc__.splitlines()[0])
    result = train(cfg)
    print(f"done: step {result['last_step']}, skipped_over_budget {result['skipped_over_budget']}")


if __name__ == "__main__":
    main()
