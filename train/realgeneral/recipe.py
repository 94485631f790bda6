"""RealGeneral two-frame LoRA on CogVideoX1.5 (arXiv 2503.10406), read top to bottom.

    python -m train.cogvideox --config configs/train/cogvideox.yaml [key=value ...]
    accelerate launch -m train.cogvideox --config configs/train/cogvideox.yaml

build (T5, VAE, transformer + UCE / SC-AdaLN / FCD, LoRA) -> data (`TwoFramePair`s) ->
loop (v-prediction loss on the target frame only) -> save (checkpoints, final adapter).

Rerunning the same command resumes from the newest checkpoint in `out_dir`; SIGTERM saves
one and exits. Checkpointing, config and logging are the code `train.fill` uses.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
import yaml

from graph200k.pair import TwoFramePair
from train.common.checkpoint import CheckpointManager, SigtermHandler
from train.common.config import (LoaderConfig, TrainConfig, check_loader, check_optim, check_train, parse_args,
                                 require, steps_of_accumulation, to_dict)
from train.common.distributed import Parallel, accelerator_kwargs
from train.common.loader import TaskLoader, image_tensor
from train.common.metrics import JsonlLog, MetricLogger
from train.common.nan_guard import check_finite
from train.common.validation import (ValidationConfig, Validator, check_validation, enabled, select_tasks,
                                     stream_tasks_setup)
from train.realgeneral.encoders import encode_images, encode_text, load_components, tokenize
from train.realgeneral.model import RealGeneralModel

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
    # Share of pairs whose transformer text is the empty prompt: trains CFG's unconditional
    # branch (inference guides against ""). 0.1 = CogVideoX's own text drop rate (its SAT
    # configs: ucg_rate 0.1), so the base keeps the unconditional behaviour it was trained with.
    caption_dropout: float = 0.1


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
class DataConfig(LoaderConfig):
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
        manifest_check=data.manifest_check,
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


def pair_tensors(pair) -> dict:
    """Runs in the DataLoader workers: both frames as uint8 tensors (pinnable)."""
    return {"condition": [image_tensor(pair.condition)], "target": [image_tensor(pair.target)]}


def dropped_captions(seed: int, rank: int, first: int, count: int, share: float) -> list[bool]:
    """Which of this rank's pairs first .. first+count-1 train the unconditional branch. Each
    decision has its own generator, keyed by the pair's ordinal: the same pairs are dropped
    after a resume, with any worker count, and the global RNG (noise, timesteps) is untouched."""
    return [share > 0 and random.Random(f"realgeneral.caption_dropout/{seed}/{rank}/{n}").random() < share
            for n in range(first, first + count)]


# ---------------------------------------------------------------------------------- loss
def diffusion_loss(parts: dict, model: RealGeneralModel, pairs: list[TwoFramePair], generator=None,
                   tensors: list[dict] | None = None, drop: list[bool] | None = None) -> torch.Tensor:
    """v-prediction MSE on the target frame; the condition frame stays clean (RealGeneral §3.1).

    CogVideoX's own finetuning weighs the x0 error by 1 / (1 - alpha_bar_t); with
    v-prediction that is exactly the MSE on v, which is what this computes.
    `tensors`: the frames as uint8 tensors from the DataLoader workers (else from `pairs`).
    `drop[i]`: pair i's transformer text is the empty prompt (caption dropout); its UCE offset
    still comes from its prompt, exactly as in CFG's unconditional branch at inference.
    """
    tokenizer, scheduler = parts["tokenizer"], parts["scheduler"]
    core = model.module if hasattr(model, "module") else model
    device = parts["vae"].device
    text_len = core.transformer.config.max_text_seq_length
    ids = tokenize(tokenizer, [p.prompt for p in pairs], text_len)
    text = encode_text(parts["text_encoder"], ids)
    context = None
    if drop is not None and any(drop):
        if "empty_text" not in parts:
            parts["empty_text"] = encode_text(parts["text_encoder"], tokenize(tokenizer, [""], text_len))
        dropped = torch.tensor(drop, device=text.device)[:, None, None]
        context = torch.where(dropped, parts["empty_text"].to(text.dtype), text)
    keyword = core.uce.keyword_mask(tokenizer, ids, [p.subject for p in pairs]).to(device)
    task_ids = core.uce.task_ids([p.task for p in pairs], device=device)
    frames = {name: ([t[name][0] for t in tensors] if tensors else [getattr(p, name) for p in pairs])
              for name in ("condition", "target")}
    condition = encode_images(parts["vae"], frames["condition"], generator)
    target = encode_images(parts["vae"], frames["target"], generator)

    # Drawn where the generator lives, then moved: a CPU generator (the same draws on every
    # machine) cannot draw on a GPU, and the CPU draws stay the bytes they were.
    at = generator.device if generator is not None else device
    noise = torch.randn(target.shape, generator=generator, device=at, dtype=target.dtype).to(device)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(pairs),), generator=generator,
                          device=at).to(device)
    noisy = scheduler.add_noise(target, noise, steps)
    velocity = scheduler.get_velocity(target, noise, steps)
    prediction = model(condition, noisy, text, steps, keyword, task_ids, context)
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


def check_config(cfg: CogVideoXConfig) -> None:
    """Nonsense values stop here, before any model is loaded (ConfigError naming the key)."""
    from train.realgeneral.fcd import MASK_VARIANTS

    check_train(cfg.train)
    check_loader(cfg.data)
    check_optim(cfg.optim)
    require(cfg.lora.rank >= 1, "lora.rank", cfg.lora.rank, "must be an integer >= 1")
    require(cfg.lora.alpha > 0, "lora.alpha", cfg.lora.alpha, "must be > 0")
    require(cfg.realgeneral.mask_variant in MASK_VARIANTS, "realgeneral.mask_variant", cfg.realgeneral.mask_variant,
            f"must be one of {', '.join(MASK_VARIANTS)}")
    require(0 <= cfg.realgeneral.caption_dropout < 1, "realgeneral.caption_dropout", cfg.realgeneral.caption_dropout,
            "must be a share in [0, 1) (0.1: one pair in ten trains the unconditional branch)")
    require(cfg.data.source == "shards", "data.source", cfg.data.source,
            "must be 'shards' (annotated Graph200K shards)")
    check_validation(cfg.validation)


def fsdp_units(model: RealGeneralModel) -> list:
    """What FSDP shards, bottom-up: each CogVideoX block, the transformer's other weights, UCE."""
    return [*model.transformer.transformer_blocks, model.transformer, model.uce]


def train(cfg: CogVideoXConfig, pairs: Iterable[TwoFramePair] | None = None) -> dict:
    """Run (or resume) the recipe; returns {"model", "parts", "losses", "step", "stopped"}.

    `pairs` replaces the configured data source (tests); a resumed run fast-forwards it by the
    pairs consumed, so it must yield the same sequence on every call.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_config(cfg)
    acc = Accelerator(**accelerator_kwargs(cfg.train))
    par = Parallel(acc)  # single / DDP / FSDP, from the launch
    accum = steps_of_accumulation(cfg.train.global_batch_size, cfg.data.micro_batch_size, acc.num_processes)
    # Missing shards or manifest fail here, naming them, before any model is loaded.
    source = pair_source(cfg.data, acc.process_index, acc.num_processes) if pairs is None else pairs
    # One seed for every rank while the model is built: LoRA's random A must be the same on all
    # of them (FSDP shards each rank's own copy; DDP would broadcast rank 0's).
    set_seed(cfg.train.seed)
    out_dir = Path(cfg.train.out_dir)

    if cfg.model.build_tiny and not (Path(cfg.model.pretrained) / "model_index.json").exists():
        if acc.is_main_process:
            from train.realgeneral.tiny import save_tiny

            save_tiny(cfg.model.pretrained, seed=cfg.train.seed)
        acc.wait_for_everyone()

    parts, model = build(cfg, acc.device)
    set_seed(cfg.train.seed + acc.process_index)  # noise and timesteps: each rank its own
    ckpt = CheckpointManager(out_dir, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, acc.process_index,
                             acc.num_processes, acc.wait_for_everyone, shard_optimizer=par.sharded,
                             gather=par.gather)
    resumed = ckpt.resume(agree=lambda ok: not par.any(not ok))
    if resumed is not None:  # into the whole model, before FSDP shards it
        model.load_trainable_state_dict({k: v.to(acc.device) for k, v in resumed.trainable.items()})
        model.uce.counts.update(resumed.extra.get("uce_counts", {}))
    model = par.prepare_model(model, fsdp_units(model))
    core: RealGeneralModel = par.unwrap(model)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP: the sharded ones
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = o.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    optimizer = par.prepare_optimizer(optimizer)
    start, data_state = 0, {}
    if resumed is not None:
        resumed.restore(optimizer, lr_scheduler)  # and this rank's RNG: nothing draws from it before the loop
        start, data_state = resumed.step, resumed.data_state
        acc.print(f"resumed from {resumed.path} (step {start})")
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ------------------------------------------------------------------------- data
    # A resumed run sees the pairs the uninterrupted run would have: GridStream starts at the
    # checkpointed position (reading nothing before it); a plain iterable is fast-forwarded.
    loader = TaskLoader(source, pair_tensors, cfg.data, cfg.train.seed + acc.process_index, data_state)
    consumed = int(data_state.get("pairs_consumed", 0))  # pairs trained on by this rank: caption dropout's key

    def data_state_now() -> dict:
        return {"pairs_consumed": consumed, **loader.state()}

    # ------------------------------------------------------------------------- loop
    log = MetricLogger(out_dir / "logs", cfg.train.max_steps, start, acc.is_main_process, cfg.train.tensorboard,
                       cfg.train.wandb_project, to_dict(cfg))
    task_log = JsonlLog(out_dir / "logs" / f"tasks.rank{acc.process_index}.jsonl", start)
    latent_side = cfg.data.res // 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    image_tokens = 2 * core.tokens_per_image(latent_side, latent_side)
    tokens_per_pair = core.transformer.config.max_text_seq_length + image_tokens
    validate = cogvideox_validator(cfg, acc, par, parts, core, log, source)
    if validate is not None and validate.pending(start):  # preempted before that step's images were written
        validate(start, model)
    losses: list[float] = []
    stop = False
    dropped_total = int(data_state.get("captions_dropped", 0))
    model.train()
    with SigtermHandler() as sigterm:
        for step in range(start + 1, cfg.train.max_steps + 1):
            t0 = time.perf_counter()
            # The step's data first: a rank whose shards fail says so before any collective.
            micro_batches = [[loader.next() for _ in range(cfg.data.micro_batch_size)] for _ in range(accum)]
            seen, skipped = par.sum([loader.consumed, loader.skipped_total])
            loader.check_skipped(seen, skipped, cfg.data.shards if pairs is None else "the pair source")
            step_loss, tasks, ids = torch.zeros((), device=acc.device), [], []
            for micro, loaded in enumerate(micro_batches):
                batch = [x.item for x in loaded]
                drop = dropped_captions(cfg.train.seed, acc.process_index, consumed, len(batch),
                                        cfg.realgeneral.caption_dropout)
                consumed += len(batch)
                dropped_total += sum(drop)
                tasks += [p.task for p in batch]
                ids += [getattr(p, "task_id", "") for p in batch]
                # Gradients are all-reduced (DDP) / reduce-scattered (FSDP) on the last micro-batch only.
                with par.no_sync(model, sync=micro == accum - 1), acc.autocast():
                    loss = diffusion_loss(parts, model, batch, tensors=[x.tensors for x in loaded], drop=drop)
                    acc.backward(loss / accum)
                step_loss += loss.detach() / accum

            step_loss = acc.reduce(step_loss, "mean")
            # Before the update: NaN weights never reach a checkpoint; the last one stays good.
            check_finite(step_loss, step, [f"{i} ({n})" for i, n in zip(ids, tasks)], ckpt.latest())
            grad_norm = par.clip_grad_norm(params, o.grad_clip)  # the global norm, on every rank
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            losses.append(float(step_loss))
            step_time = time.perf_counter() - t0
            task_log.write({"step": step, "tasks": ids, "names": tasks})
            stop = par.any(sigterm.requested)
            images = validate(step, model) if validate and validate.due(step) and not stop else {}
            log.log(step, loss=float(step_loss), lr=lr_scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    samples=cfg.train.global_batch_size, tokens=cfg.train.global_batch_size * tokens_per_pair,
                    step_time=step_time, keyword_missing=core.uce.counts["keyword_missing"],
                    pairs_seen=core.uce.counts["samples"], captions_dropped=dropped_total,
                    skipped_tasks=int(skipped), tasks_seen=int(seen), **images)
            if ckpt.should_save(step, stop) or step == cfg.train.max_steps:
                ckpt.save(step, par.full(core.trainable_state_dict()), optimizer, lr_scheduler,
                          {**data_state_now(), "captions_dropped": dropped_total},
                          {"uce_counts": dict(core.uce.counts)})
            if stop:
                log.write(f"SIGTERM: saved step {step}; rerun the same command to resume")
                break

    # ------------------------------------------------------------------------- save
    stopped = bool(losses) and start + len(losses) < cfg.train.max_steps
    if not stopped:
        state = par.full(core.trainable_state_dict())  # every rank: FSDP gathers the shards
        if acc.is_main_process:
            core.save_adapter(out_dir / "lora", state)
            log.write(f"adapter: {out_dir / 'lora'} (subject keyword missing in "
                      f"{core.uce.counts['keyword_missing']} of {core.uce.counts['samples']} prompts)")
    log.close()
    task_log.close()
    acc.wait_for_everyone()
    return {"model": core, "parts": parts, "losses": losses, "step": start + len(losses), "stopped": stopped,
            "skipped_tasks": dict(loader.skipped)}


def cogvideox_validator(cfg: CogVideoXConfig, acc, par: Parallel, parts: dict, core: RealGeneralModel, log,
                        source=None) -> Validator | None:
    """The fixed validation pairs (condition -> target), generated by train.infer_cogvideox on the
    modules this run already holds; written as condition | generated target."""
    v = cfg.validation
    if not enabled(v, acc, log.write, sharded=par.sharded):
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

    return Validator(v, cfg.train.out_dir, tasks, build_pair, run, log, write=acc.is_main_process)


def main(argv=None) -> None:
    cfg = parse_args(CogVideoXConfig, argv, description=__doc__.splitlines()[0])
    result = train(cfg)
    print(f"done: step {result['step']}" + (" (stopped by SIGTERM)" if result["stopped"] else ""))


if __name__ == "__main__":
    main()
