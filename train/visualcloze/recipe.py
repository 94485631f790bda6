"""FLUX.1-Fill-dev LoRA on visual-cloze grids (VisualCloze, arXiv 2504.07960).

    python -m train.fill --config configs/train/fill-tiny.yaml [key=value ...]
    accelerate launch --config_file configs/accelerate/8gpu-fsdp.yaml -m train.fill --config configs/train/fill.yaml

Read top to bottom: config → build (models, LoRA, optimizer, resume) → data → loop → save.
Rerunning the same command resumes from the newest checkpoint in `train.out_dir`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from train.common.checkpoint import CheckpointManager, SigtermHandler, sort_safetensors_metadata
from train.common.config import (LoaderConfig, TrainConfig, check_loader, check_optim, check_train, parse_args,
                                 require, steps_of_accumulation, to_dict)
from train.common.distributed import Parallel, accelerator_kwargs
from train.common.feature_cache import FeatureCache
from train.common.loader import Loaded, TaskLoader, image_tensor
from train.common.metrics import JsonlLog, MetricLogger
from train.common.nan_guard import check_finite
from train.common.validation import (ValidationConfig, Validator, check_validation, enabled, select_tasks,
                                     stream_tasks_setup)
from train.visualcloze.inputs import (FillBatch, GridLatents, check_row_sizes, collate, encode_grid, encode_prompts,
                                      encode_rows, grid_latents, grid_pixels, grid_tokens, masked_rows)
from train.visualcloze.layouts import consecutive_micro_batches, layout_key, padding_stats, plan_micro_batches
from train.visualcloze.model import (PerSampleRopeAttnProcessor, add_lora, init_lora_from, load_lora_state_dict,
                                     load_text_encoders, load_transformer, load_vae, lora_state_dict,
                                     predict_velocity, sample_timesteps, torch_dtype, velocity_loss)
from train.visualcloze.tiny import TinyFillConfig

CACHE_DTYPE = torch.bfloat16  # half the bytes of fp32; the transformer reads its inputs in bf16 anyway


def cacheable_row(grid, row: int) -> bool:
    """A row is worth caching when every cell is a stored image: an online degradation draws new
    pixels each time the task comes back, so its latents would never be read again."""
    from graph200k.nodes import DEGRADATIONS

    return not grid.cells or not any(c in DEGRADATIONS for c in grid.cells[row])


# ----------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    pretrained: str = "black-forest-labs/FLUX.1-Fill-dev"  # hub id or local diffusers folder
    revision: str | None = None
    dtype: str = "bfloat16"  # frozen transformer / VAE / text encoders
    gradient_checkpointing: bool = True
    max_sequence_length: int = 512  # T5 tokens
    build_tiny: bool = False  # build a tiny random model at `pretrained` first if it is missing
    # "blocks": torch.compile each transformer block on its own (regional compilation: one
    # compiled graph reused by the 19 + 38 blocks; gradient checkpointing and LoRA unchanged).
    compile: str | bool = False


@dataclass
class LoraSection:
    rank: int = 256
    alpha: float = 256.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    # Continue from a LoRA instead of a fresh one (rank / alpha / targets then come from it): a
    # train.fill lora folder, diffusers' visualcloze-lora-384.safetensors (a file, or a hub repo
    # with init_weight_name), or the reference trainer's visualcloze-384-lora.pth.
    init_from: str | None = None
    init_weight_name: str | None = None


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
class DataConfig(LoaderConfig):
    source: str = "shards"  # annotated Graph200K shards through graph200k.stream.GridStream
    shards: str = "shards/graph200k"
    manifest: str | None = None  # null: built by scanning the shards
    res: int = 384
    seed: int = 0
    families: list[str] | None = None
    tasks_config: str = "configs/tasks.yaml"
    micro_batch_size: int = 1
    # A step's grids are grouped into micro-batches of one layout (no padding, no masked
    # attention); false: cut in stream order (the masked per-sample path for mixed layouts).
    group_by_layout: bool = True
    max_tokens: int = 0  # grids with more image tokens are skipped and counted; 0 = no limit
    cache_dir: str | None = None  # cache clean rows' VAE latents + prompts' text embeddings here (bf16)


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
    """VAE + text encoders, loaded on first use: with a warm cache they are never loaded.

    The cache holds what repeats: a prompt's embeddings, and the latents of a grid row whose
    cells are all stored images (a row showing an online degradation is random, so it is
    encoded every time and never stored). Entries are bf16 and carry no mask channels; with a
    cache every latent and embedding goes through bf16, so a cold run equals a warm one.
    """

    def __init__(self, cfg: FillConfig, device):
        self.cfg, self.device = cfg, device
        self._vae = self._text = None
        self.vae_scale = _vae_scale(cfg)  # from the VAE's config file: a warm cache never loads the VAE
        cache = cfg.data.cache_dir
        self.latent_cache = FeatureCache(cache, "latents") if cache else None
        self.text_cache = FeatureCache(cache, "text") if cache else None

    def vae(self):
        if self._vae is None:
            m = self.cfg.model
            self._vae = load_vae(m.pretrained, torch_dtype(m.dtype), m.revision).to(self.device).eval()
            self._vae.requires_grad_(False)
        return self._vae

    def latents(self, grid, pixels=None) -> GridLatents:
        if self.latent_cache is None:
            return encode_grid(grid, self.vae(), pixels)
        s, m = self.vae_scale, self.cfg.model
        check_row_sizes(grid, s)
        masks = masked_rows(grid)
        keys = [FeatureCache.key(m.pretrained, m.revision, m.dtype, row, mask) if cacheable_row(grid, r) else None
                for r, (row, mask) in enumerate(zip(grid.rows, masks))]
        rows = [self._cached_row(k) for k in keys]
        missing = [r for r, hit in enumerate(rows) if hit is None]
        if missing:
            vae = self.vae()
            px = grid_pixels(grid, vae.device, pixels)
            encoded = encode_rows(vae, [px[r] for r in missing], [masks[r] for r in missing])
            for r, (clean, blank) in zip(missing, encoded):
                if keys[r] is None:
                    rows[r] = (clean, blank)
                    continue
                entry = {"latents": clean[0].to(CACHE_DTYPE)}
                if masks[r] is not None:
                    entry["masked_latents"] = blank[0].to(CACHE_DTYPE)
                self.latent_cache.put(keys[r], {k: v.cpu() for k, v in entry.items()})
                rows[r] = self._row(entry, clean.device)
        return grid_latents(grid, rows, s)

    def _cached_row(self, key):
        hit = self.latent_cache.get(key) if key else None
        return None if hit is None else self._row(hit, self.device)

    @staticmethod
    def _row(entry: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
        clean = entry["latents"].to(device).float()[None]
        blank = entry["masked_latents"].to(device).float()[None] if "masked_latents" in entry else clean
        return clean, blank

    def text_models(self):
        """(clip tokenizer, CLIP, t5 tokenizer, T5), loaded once."""
        if self._text is None:
            m = self.cfg.model
            tok, clip, tok2, t5 = load_text_encoders(m.pretrained, torch_dtype(m.dtype), m.revision)
            self._text = (tok, clip.to(self.device), tok2, t5.to(self.device))
        return self._text

    def text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) T5 and (B, Dp) pooled CLIP embeddings on the device; every prompt not in the
        cache (all of them without one) goes through the encoders in one batched call."""
        m = self.cfg.model
        keys = [FeatureCache.key(m.pretrained, m.revision, m.dtype, m.max_sequence_length, p) if self.text_cache
                else None for p in prompts]
        rows = [self.text_cache.get(k) if k else None for k in keys]
        missing = list(dict.fromkeys(p for p, r in zip(prompts, rows) if r is None))  # each prompt once
        if missing:
            t5_embeds, pooled = encode_prompts(missing, *self.text_models(), max_sequence_length=m.max_sequence_length)
            new = {}
            for i, p in enumerate(missing):
                entry = {"text": t5_embeds[i], "pooled": pooled[i]}
                if self.text_cache:
                    entry = {k: v.to(CACHE_DTYPE) for k, v in entry.items()}
                    self.text_cache.put(keys[prompts.index(p)], {k: v.cpu() for k, v in entry.items()})
                new[p] = entry
            rows = [r if r is not None else new[p] for p, r in zip(prompts, rows)]
        text = torch.stack([r["text"].to(self.device) for r in rows]).float()
        return text, torch.stack([r["pooled"].to(self.device) for r in rows]).float()


def grid_source(data_cfg: DataConfig, rank: int = 0, world_size: int = 1):
    """The recipe's only data entry point: this process's stream of graph200k.grid.Grid."""
    if data_cfg.source != "shards":
        raise ValueError(f"data.source must be 'shards' (annotated Graph200K shards), got {data_cfg.source!r}")
    from graph200k.stream import GRID, GridStream

    # The stream splits its task sequence across ranks itself (DDP/FSDP).
    return GridStream(shards=data_cfg.shards, manifest=data_cfg.manifest, res=data_cfg.res, seed=data_cfg.seed,
                      families=data_cfg.families, tasks_config=data_cfg.tasks_config, mode=GRID, rank=rank,
                      world_size=world_size, manifest_check=data_cfg.manifest_check)


def grid_tensors(grid) -> dict:
    """Runs in the DataLoader workers: the grid's rows as uint8 tensors (pinnable)."""
    return {"rows": [image_tensor(row) for row in grid.rows]}


class MicroBatches:
    """A step's micro-batches of loaded Grids; grids over the token budget are skipped and counted.

    `step(accum)` takes the step's accum x size grids in stream order and, with
    `group_by_layout`, regroups them into micro-batches of one layout (train.visualcloze.layouts):
    the step's grids and so its gradient are the same either way, only the padding goes.
    `state()` is the loader's (its stream position, tasks skipped by reason) plus the
    over-budget count: a resumed run starts the stream there without reading used grids.
    """

    def __init__(self, loader: TaskLoader, size: int, max_tokens: int, scale: int, state: dict | None = None,
                 group_by_layout: bool = True):
        self.loader, self.size, self.max_tokens, self.scale = loader, size, max_tokens, scale
        self.group_by_layout = group_by_layout
        self.over_budget = int((state or {}).get("skipped_over_budget", 0))

    def next(self) -> list[Loaded]:
        out = []
        while len(out) < self.size:
            loaded = self.loader.next()
            if self.max_tokens and grid_tokens(loaded.item, self.scale) > self.max_tokens:
                self.over_budget += 1
                continue
            out.append(loaded)
        return out

    def draw(self, accum: int) -> list[Loaded]:
        """The step's grids, in stream order."""
        return [x for _ in range(accum) for x in self.next()]

    def plan(self, grids: list[Loaded], count: int = 0) -> list[list[Loaded]]:
        """Micro-batches of `grids`; `count`: at least that many (every rank the same under FSDP)."""
        if self.group_by_layout:
            idx = plan_micro_batches([layout_key(x.item) for x in grids], self.size, count)
        else:
            idx = consecutive_micro_batches(len(grids), self.size)
        return [[grids[i] for i in mb] for mb in idx]

    def state(self) -> dict:
        return {**self.loader.state(), "skipped_over_budget": self.over_budget}


def micro_batch(encoders: Encoders, loaded: list[Loaded]) -> FillBatch:
    """A micro-batch's inputs on the device: the prompts' embeddings (one encoder call for all that
    are not cached), each grid's latents (one VAE call per row size), collated."""
    grids = [x.item for x in loaded]
    text, pooled = encoders.text([g.prompt for g in grids])
    return collate([encoders.latents(g, x.tensors.get("rows")) for g, x in zip(grids, loaded)], text, pooled,
                   [g.task_id for g in grids])


def flow_loss(transformer, batch: FillBatch, obj: ObjectiveConfig, device) -> torch.Tensor:
    """Rectified-flow loss of one micro-batch, a device scalar. Nothing here waits for the GPU:
    host tensors go over with non_blocking copies and no value is read back."""
    x0 = batch.latents.to(device)
    t = sample_timesteps(x0.shape[0], batch.num_tokens, obj.time_shift, base_shift=obj.base_shift,
                         max_shift=obj.max_shift).to(device, non_blocking=True)
    noise = torch.randn_like(x0)
    noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    pred = predict_velocity(transformer, batch, noisy, t, obj.guidance)
    region = batch.valid if obj.loss_on == "grid" else batch.cell & batch.valid
    return velocity_loss(pred, noise, x0, region.to(device, non_blocking=True))


def check_config(cfg: FillConfig) -> None:
    """Nonsense values stop here, before any model is loaded (ConfigError naming the key)."""
    check_train(cfg.train)
    check_loader(cfg.data)
    check_optim(cfg.optim)
    require(cfg.data.max_tokens >= 0, "data.max_tokens", cfg.data.max_tokens, "must be >= 0 (0 = no limit)")
    require(cfg.model.compile in (False, "blocks"), "model.compile", cfg.model.compile,
            "must be false or 'blocks' (torch.compile each transformer block)")
    require(cfg.lora.rank >= 1, "lora.rank", cfg.lora.rank, "must be an integer >= 1")
    require(cfg.lora.alpha > 0, "lora.alpha", cfg.lora.alpha, "must be > 0")
    require(cfg.objective.loss_on in ("grid", "masked_cell"), "objective.loss_on", cfg.objective.loss_on,
            "must be 'grid' (every image token, VisualCloze's trainer) or 'masked_cell'")
    require(cfg.data.source == "shards", "data.source", cfg.data.source,
            "must be 'shards' (annotated Graph200K shards)")
    check_validation(cfg.validation)


def compile_blocks(transformer) -> None:
    """torch.compile every double- and single-stream block in place (nn.Module.compile): names,
    LoRA layers, FSDP units and the checkpointed calls stay as they are; blocks of one class share
    their compiled code, so the 57 blocks cost two compilations (plus one per new token count
    until dynamo marks it dynamic), and the fused LoRA scale-adds run as generated kernels."""
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.compile()


def fsdp_units(transformer) -> list:
    """What FSDP shards, bottom-up: each double- and single-stream block, then the rest."""
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks, transformer]


def train(cfg: FillConfig) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_config(cfg)
    # ------------------------------------------------------------------------- build
    acc = Accelerator(**accelerator_kwargs(cfg.train))
    par = Parallel(acc)  # single / DDP / FSDP, from the launch
    accum = steps_of_accumulation(cfg.train.global_batch_size, cfg.data.micro_batch_size, acc.num_processes)
    # Missing shards or manifest fail here, naming them, before any model is loaded.
    source = grid_source(cfg.data, acc.process_index, acc.num_processes)
    # One seed for every rank while the model is built: LoRA's random A must be the same on all
    # of them (FSDP shards each rank's own copy; DDP would broadcast rank 0's).
    set_seed(cfg.train.seed)
    out_dir = Path(cfg.train.out_dir)

    if cfg.model.build_tiny and not (Path(cfg.model.pretrained) / "model_index.json").exists():
        if acc.is_main_process:
            from train.visualcloze.tiny import build_tiny_fill

            build_tiny_fill(cfg.model.pretrained, cfg.tiny)
        acc.wait_for_everyone()

    transformer = load_transformer(cfg.model.pretrained, torch_dtype(cfg.model.dtype), cfg.model.revision)
    if cfg.lora.init_from:
        init_lora_from(transformer, cfg.lora.init_from, cfg.lora.init_weight_name)
    else:
        add_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules, cfg.lora.dropout)
    transformer.set_attn_processor(PerSampleRopeAttnProcessor())
    if cfg.model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if cfg.model.compile == "blocks":
        compile_blocks(transformer)
    encoders = Encoders(cfg, acc.device)
    set_seed(cfg.train.seed + acc.process_index)  # noise and timesteps: each rank its own
    scale = encoders.vae_scale

    ckpt = CheckpointManager(out_dir, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, acc.process_index,
                             acc.num_processes, acc.wait_for_everyone, shard_optimizer=par.sharded,
                             gather=par.gather)
    resumed = ckpt.resume(agree=lambda ok: not par.any(not ok))
    if resumed is not None:  # into the whole model, before FSDP shards it
        load_lora_state_dict(transformer, resumed.trainable)
    transformer = par.prepare_model(transformer, fsdp_units(transformer))
    params = [p for p in transformer.parameters() if p.requires_grad]  # FSDP: the sharded ones
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    warmup = cfg.optim.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    optimizer = par.prepare_optimizer(optimizer)
    start, data_state = 0, None
    if resumed is not None:
        resumed.restore(optimizer, lr_scheduler)  # and this rank's RNG: nothing draws from it before the loop
        start, data_state = resumed.step, resumed.data_state
        acc.print(f"resumed from {resumed.path} (step {start})")
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ------------------------------------------------------------------------- data
    loader = TaskLoader(source, grid_tensors, cfg.data, cfg.train.seed + acc.process_index, data_state)
    batches = MicroBatches(loader, cfg.data.micro_batch_size, cfg.data.max_tokens, scale, data_state,
                           cfg.data.group_by_layout)

    # ------------------------------------------------------------------------- loop
    log = MetricLogger(out_dir / "logs", cfg.train.max_steps, start, acc.is_main_process, cfg.train.tensorboard,
                       cfg.train.wandb_project, to_dict(cfg))
    task_log = JsonlLog(out_dir / "logs" / f"tasks.rank{acc.process_index}.jsonl", start)
    validate = fill_validator(cfg, acc, par, transformer, encoders, scale, log, source)
    if validate is not None and validate.pending(start):  # preempted before that step's images were written
        validate(start, transformer)
    obj = cfg.objective
    losses, stop = [], False
    transformer.train()
    with SigtermHandler() as sigterm:
        for step in range(start + 1, cfg.train.max_steps + 1):
            t0 = time.perf_counter()
            # The step's data first: a rank whose shards fail says so before any collective.
            step_grids = batches.draw(accum)
            micro_batches = batches.plan(step_grids)
            if par.sharded:  # every rank runs as many forwards (each gathers the parameters): splits make more
                micro_batches = batches.plan(step_grids, par.max(len(micro_batches)))
            seen, skipped, over_budget, tokens = par.sum([
                loader.consumed, loader.skipped_total, batches.over_budget,
                sum(grid_tokens(x.item, scale) for x in step_grids)])  # all ranks, one all-reduce
            loader.check_skipped(seen, skipped, cfg.data.shards)
            shapes = padding_stats([[x.item for x in mb] for mb in micro_batches], scale)
            step_loss, task_ids = torch.zeros((), device=acc.device), []
            for micro, loaded in enumerate(micro_batches):
                batch = micro_batch(encoders, loaded)
                task_ids += batch.task_ids
                share = len(loaded) / len(step_grids)  # the step's loss: the mean over its grids
                # Gradients are all-reduced (DDP) / reduce-scattered (FSDP) on the last micro-batch only.
                with par.no_sync(transformer, sync=micro == len(micro_batches) - 1), acc.autocast():
                    loss = flow_loss(transformer, batch, obj, acc.device)
                    acc.backward(loss * share)
                step_loss += loss.detach() * share  # on the device: read once per step, after the loop

            step_loss = acc.reduce(step_loss, "mean")
            # Before the update: NaN weights never reach a checkpoint; the last one stays good.
            check_finite(step_loss, step, task_ids, ckpt.latest())
            grad_norm = par.clip_grad_norm(params, cfg.optim.grad_clip)  # the global norm, on every rank
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            losses.append(float(step_loss))
            step_time = time.perf_counter() - t0
            task_log.write({"step": step, "tasks": task_ids})
            stop = par.any(sigterm.requested)
            images = validate(step, transformer) if validate and validate.due(step) and not stop else {}
            log.log(step, loss=float(step_loss), lr=lr_scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    samples=cfg.train.global_batch_size, tokens=int(tokens), step_time=step_time,
                    skipped_over_budget=int(over_budget), skipped_tasks=int(skipped), tasks_seen=int(seen),
                    **shapes, **images)
            last = step == cfg.train.max_steps
            if ckpt.should_save(step, stop) or last:
                ckpt.save(step, _trainable_state(par, transformer), optimizer, lr_scheduler, batches.state(),
                          {"skipped_over_budget": batches.over_budget, "skipped_tasks": dict(loader.skipped)})
            if stop:
                log.write(f"SIGTERM: saved step {step}; rerun the same command to resume")
                break

    # ------------------------------------------------------------------------- save
    lora_dir = out_dir / "lora"
    if not stop:
        lora = _trainable_state(par, transformer)  # every rank: FSDP gathers the shards
        if acc.is_main_process:
            from diffusers import FluxFillPipeline
            from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE

            # diffusers' LoRA format: loads with FluxFillPipeline / VisualClozePipeline.load_lora_weights(lora_dir).
            # The adapter config rides in the file's metadata: without it diffusers assumes
            # alpha = rank, and a LoRA trained with another alpha would load at the wrong scale.
            config = par.unwrap(transformer).peft_config["default"].to_dict()
            FluxFillPipeline.save_lora_weights(lora_dir, transformer_lora_layers=lora, safe_serialization=True,
                                               transformer_lora_adapter_metadata=config)
            sort_safetensors_metadata(lora_dir / LORA_WEIGHT_NAME_SAFE)  # same bytes every run
    log.close()
    task_log.close()
    acc.wait_for_everyone()
    return {"losses": losses, "skipped_over_budget": batches.over_budget, "skipped_tasks": dict(loader.skipped),
            "last_step": start + len(losses), "lora_dir": lora_dir,
            "cache_hits": encoders.latent_cache.hits if encoders.latent_cache else 0}


def fill_validator(cfg: FillConfig, acc, par: Parallel, transformer, encoders: Encoders, scale: int, log,
                   source=None) -> Validator | None:
    """The fixed validation grids (inference sizing, masked cell unread), solved by GridFillPipeline
    on the modules this run already holds: the LoRA transformer, the VAE, the text encoders."""
    v = cfg.validation
    if not enabled(v, acc, log.write, sharded=par.sharded):
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
                     run, log, write=acc.is_main_process)


def _trainable_state(par: Parallel, transformer) -> dict[str, torch.Tensor]:
    """The LoRA weights as full CPU tensors on every rank; under FSDP gathered (a collective)."""
    return par.full(lora_state_dict(par.unwrap(transformer)))


def _vae_scale(cfg: FillConfig) -> int:
    """VAE downscale factor from the VAE config alone (no weights): keeps cached runs VAE-free."""
    from diffusers import AutoencoderKL

    conf = AutoencoderKL.load_config(cfg.model.pretrained, subfolder="vae", revision=cfg.model.revision)
    return 2 ** (len(conf["block_out_channels"]) - 1)


def main(argv=None):
    cfg = parse_args(FillConfig, argv, description=__doc__.splitlines()[0])
    result = train(cfg)
    print(f"done: step {result['last_step']}, skipped_over_budget {result['skipped_over_budget']}, "
          f"skipped_tasks {result['skipped_tasks'] or 0}")


if __name__ == "__main__":
    main()
