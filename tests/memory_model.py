"""Fake-tensor memory model of one worst-case training micro-batch per shipped config and launcher.

ESTIMATES, not measurements: the real architectures at real size are built on the ``meta``
device, given fake CPU tensors (``FakeTensorMode``: shapes and dtypes, no storage), LoRA added
with the recipe's own code, and one micro-batch at the config's worst case runs forward +
backward + the optimizer step under torch's own trackers (``MemTracker``; ``FSDPMemTracker``
over a fake 8-rank process group for FSDP2). The figure is the tracker's peak of live tensor
bytes; the CUDA caching allocator's fragmentation (variable sequence lengths) and the CUDA
context (~0.5-1 GiB) come on top, hence the 70 GiB limit on an 80 GB card.

What it covers, in the steady state of a step (not the first micro-batch of the run):
parameters (bf16 base, float32 LoRA), the gradients accumulated so far, AdamW's two float32
moments, activations with or without gradient checkpointing, FSDP2's all-gather and
reduce-scatter buffers and its unsharded gradients kept across ``no_sync`` micro-batches,
DDP's bucket copy of the gradients (``gradient_as_bucket_view=False`` only: the one piece added
by arithmetic, DDP's C++ reducer is not seen by a dispatch mode), and the frozen encoders the
recipe keeps on the GPU (their parameters; their own activations are freed before the
transformer runs).

A full-depth fake run takes minutes on 2 cores, so the model measures 1-2 blocks of each
kind and extrapolates linearly in the block counts (every per-block cost -- weights, LoRA,
gradients, moments, checkpointed block inputs -- is linear in depth; the recompute of one
block is constant; under FSDP the fit starts at 2 blocks of each kind, see fill_estimate). ``tests/test_memory_model.py::test_extrapolation_matches_a_full_depth_run``
(``-m slow``) checks the extrapolation against the whole model.

    PYTHONPATH=. python tests/memory_model.py     # the table of docs/training.md
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

GIB = 2**30
LIMIT_GIB = 70.0  # on an 80 GB card: ~10 GiB for the CUDA context, allocator slack, fragmentation
WORLD = 8  # GPUs of configs/accelerate/8gpu-*.yaml

# FLUX.1-Fill-dev transformer/config.json.
FLUX_FILL = dict(patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                 pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# FLUX.1 VAE (vae/config.json): 16 latent channels, downscale 8.
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False)
# T5 v1.1 XXL encoder (FLUX's text_encoder_2, CogVideoX's text_encoder) and CLIP ViT-L/14's text tower.
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu")
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
# CogVideoX1.5-5B transformer/config.json (the recipe's model.pretrained).
COGVIDEOX15_5B = dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                      time_embed_dim=512, text_embed_dim=4096, num_layers=42, flip_sin_to_cos=True, freq_shift=0,
                      sample_width=300, sample_height=300, sample_frames=81, patch_size=2, patch_size_t=2,
                      temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
                      timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
                      spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
                      use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
                      patch_bias=False)

# How far the extrapolation may be from a full-depth fake run (test_extrapolation_matches_a_full_depth_run,
# FLUX.1-Fill micro-batch 2 at 6912 tokens: DDP 51.8 extrapolated vs 51.8 GiB at full depth, FSDP2
# 17.0 vs 18.7 GiB: under FSDP the backward's peak moves with depth, from the recompute of a block
# towards the unsharded gradients accumulated by the no_sync micro-batches). The fit tests keep
# this margin below the limit.
EXTRAPOLATION_TOLERANCE = 0.10

FILL_TEXT_TOKENS = 512  # model.max_sequence_length of configs/train/fill.yaml


@dataclass(frozen=True)
class Peak:
    """Peak live bytes on one GPU, split as the trackers split them (+ the pieces added here).

    Kept per phase: the forward's peak (every checkpointed block input saved) and the
    backward's (one block recomputed beside them, gradients arriving) grow at different rates
    with depth, so each is extrapolated on its own and the larger one is the peak."""

    forward: tuple[tuple[str, int], ...]
    backward: tuple[tuple[str, int], ...]

    @staticmethod
    def of(forward: dict, backward: dict) -> "Peak":
        def parts(snap):
            return tuple((str(getattr(k, "value", k)), int(v)) for k, v in snap.items() if k != "Total" and v)

        return Peak(parts(forward), parts(backward))

    @property
    def parts(self) -> tuple[tuple[str, int], ...]:
        fw, bw = sum(v for _, v in self.forward), sum(v for _, v in self.backward)
        return self.forward if fw >= bw else self.backward

    @property
    def total(self) -> int:
        return sum(v for _, v in self.parts)

    @property
    def gib(self) -> float:
        return self.total / GIB

    def part(self, name: str) -> int:
        return dict(self.parts).get(name, 0)

    def plus(self, extra: dict[str, int]) -> "Peak":
        return Peak(self.forward + tuple(extra.items()), self.backward + tuple(extra.items()))


# ----------------------------------------------------------------------------- trackers
def _tracker_class():
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class FrozenAwareTracker(MemTracker):
        """MemTracker for a model with frozen weights, at the cost of one dict per op.

        MemTracker hooks every parameter for its gradient (a frozen one cannot be hooked) and
        refreshes the peak of every module after every op (hours at 57 blocks): only the
        trainable ones are hooked and only the global peak is kept."""

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            out = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                for p in module.parameters():
                    if p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                        def grad_hook(grad):
                            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                        self._param_to_grad_hook_handles[p] = (
                            p.register_hook(grad_hook),
                            p.register_post_accumulate_grad_hook(lambda q: grad_hook(q.grad)))
            return out

        def _update_peak_stats(self, peak_state):
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return FrozenAwareTracker


def _fsdp_tracker_class():
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    class FastFSDPTracker(FSDPMemTracker):
        def _update_peak_stats(self, peak_state):  # the global peak only, as above
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return FastFSDPTracker


@contextlib.contextmanager
def fake_world(world: int = WORLD):
    """A fake process group of `world` ranks in this process (this is rank 0): collectives are
    no-ops with the right shapes, so FSDP2 shards and gathers as it would on 8 GPUs."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _fakeify(model: torch.nn.Module) -> None:
    """meta parameters -> fake CPU tensors of the same shape, dtype and requires_grad (call
    inside the FakeTensorMode); peft's and diffusers' init already ran on meta."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                              requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype)


def _measure(model, units, forward, *, fsdp_world: int | None, micro_batches: int, root=None) -> Peak:
    """Peak of `micro_batches` micro-batches (`forward()` -> loss, then backward) and the step, with
    the gradients and AdamW moments of earlier steps already there (the steady state).
    `root`: the FSDP unit holding the others (FSDPMemTracker's module; default `model`)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if fsdp_world:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (fsdp_world,))  # outside the fake mode: it runs a collective
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        _fakeify(model)
        if fsdp_world:
            # train.common.distributed.Parallel.prepare_model's policy.
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                          cast_forward_inputs=False)
            for unit in units:
                fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()  # AdamW's moments exist from the first step on
        if fsdp_world:
            optimizer.zero_grad(set_to_none=True)
            tracker = _fsdp_tracker_class()(root or model, optimizer)
        else:
            tracker = _tracker_class()()
            tracker.track_external(model, optimizer)
        phases = {"forward": [], "backward": []}

        def peak_of(phase):  # the tracker's peak since the last call, then a fresh one
            phases[phase].append(next(iter(tracker.get_tracker_snapshot("peak").values())))
            tracker._peak_mem, tracker._peak_mem_snap = {}, {}

        with tracker:
            for micro in range(micro_batches):
                last = micro == micro_batches - 1
                if fsdp_world:  # Parallel.no_sync: unsharded gradients kept until the last one
                    for unit in units:
                        unit.set_requires_gradient_sync(last, recurse=False)
                    if micro:
                        tracker.reset_mod_stats()
                loss = forward()
                peak_of("forward")
                loss.backward()
                del loss
                if last:
                    optimizer.step()
                peak_of("backward")
    return Peak.of(max(phases["forward"], key=lambda s: s["Total"]),
                   max(phases["backward"], key=lambda s: s["Total"]))


# ----------------------------------------------------------------------------- FLUX.1-Fill
def _flux_fill(double: int, single: int, rank: int):
    from diffusers import FluxTransformer2DModel

    from train.visualcloze.model import PerSampleRopeAttnProcessor, add_lora

    with torch.device("meta"):
        model = FluxTransformer2DModel(**{**FLUX_FILL, "num_layers": double, "num_single_layers": single})
        model.to(torch.bfloat16)  # model.dtype: bfloat16
        add_lora(model, rank, float(rank))
    model.set_attn_processor(PerSampleRopeAttnProcessor())
    return model


def fill_peak(double: int, single: int, *, micro_batch: int, tokens: int, checkpointing: bool = True,
              rank: int = 256, fsdp_world: int | None = None, mixed_layouts: bool = True) -> Peak:
    """One train.fill step's micro-batch at `double` + `single` blocks. `mixed_layouts`: the
    per-sample RoPE + key-padding path (grids of different layouts in one micro-batch, the
    recipe's worst case); else the shared-layout path."""
    from train.visualcloze.recipe import fsdp_units
    from train.visualcloze.inputs import text_position_ids

    model = _flux_fill(double, single, rank)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    b, n, t = micro_batch, tokens, FILL_TEXT_TOKENS
    bf16 = torch.bfloat16

    def forward():
        ids = torch.zeros(n, 3)
        kwargs = None
        with torch.autocast("cpu", dtype=bf16):  # accelerate's bf16 autocast (CUDA on the GPU)
            if mixed_layouts:  # as train.visualcloze.model.predict_velocity builds them (`.forward`:
                # module hooks would take b calls from the top for b training iterations)
                tables = [model.pos_embed.forward(torch.cat([text_position_ids(t), ids])) for _ in range(b)]
                kwargs = {"sample_rotary_emb": (torch.stack([c for c, _ in tables]), torch.stack([s for _, s in tables])),
                          "key_padding": torch.ones(b, t + n, dtype=torch.bool)}
            out = model(hidden_states=torch.randn(b, n, 384, dtype=bf16), timestep=torch.ones(b, dtype=bf16),
                        guidance=torch.ones(b, dtype=bf16), pooled_projections=torch.randn(b, 768, dtype=bf16),
                        encoder_hidden_states=torch.randn(b, t, 4096, dtype=bf16), txt_ids=text_position_ids(t),
                        img_ids=ids, joint_attention_kwargs=kwargs, return_dict=False)[0]
            return (out.float() - torch.randn(b, n, 64)).pow(2).mean()

    return _measure(model, fsdp_units(model), forward, fsdp_world=fsdp_world, micro_batches=2 if fsdp_world else 1)


# ----------------------------------------------------------------------------- CogVideoX
def _realgeneral(layers: int, rank: int):
    from diffusers import CogVideoXTransformer3DModel

    from train.realgeneral.model import RealGeneralModel

    with torch.device("meta"):
        transformer = CogVideoXTransformer3DModel(**{**COGVIDEOX15_5B, "num_layers": layers}).to(torch.bfloat16)
        model = RealGeneralModel(transformer, ["canny", "depth", "subject"], "A")
        model.add_lora(rank, rank)
        for p in model.parameters():
            if p.requires_grad:  # train.realgeneral.recipe.build: LoRA + UCE in float32
                p.data = p.data.float()
    return model


def cogvideox_peak(layers: int, *, micro_batch: int, res: int = 512, checkpointing: bool = True, rank: int = 256,
                   fsdp_world: int | None = None) -> Peak:
    """One train.cogvideox micro-batch at `layers` blocks: condition + target frames at `res`²."""
    from train.realgeneral.recipe import fsdp_units

    model = _realgeneral(layers, rank)
    if checkpointing:
        model.transformer.enable_gradient_checkpointing()
    model.train()
    b, side, t = micro_batch, res // 8, COGVIDEOX15_5B["max_text_seq_length"]
    bf16 = torch.bfloat16

    def forward():
        # The FCD mask, built once per shape by the model; its builder reads the mask's values
        # (`nonzero`), which fake tensors do not have: the cache gets a tensor of its shape.
        n = model.tokens_per_image(side, side)
        model._mask_cache[(model.mask_variant, t, side, side, "cpu", bf16)] = torch.zeros(t + 2 * n, t + 2 * n, dtype=bf16)
        with torch.autocast("cpu", dtype=bf16):
            pred = model(torch.randn(b, 1, 16, side, side, dtype=bf16), torch.randn(b, 1, 16, side, side, dtype=bf16),
                         torch.randn(b, t, 4096, dtype=bf16), torch.ones(b, dtype=torch.long),
                         torch.ones(b, t, dtype=torch.bool), torch.zeros(b, dtype=torch.long))
            return (pred.float() - torch.randn(b, 1, 16, side, side)).pow(2).mean()

    return _measure(model, fsdp_units(model), forward, fsdp_world=fsdp_world, micro_batches=2 if fsdp_world else 1,
                    root=model.transformer)


# ----------------------------------------------------------------------------- encoders
@functools.lru_cache(maxsize=None)
def encoder_bytes(recipe: str) -> int:
    """bf16 parameters of the frozen encoders a recipe keeps on its GPU (meta device, no weights)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        models = [T5EncoderModel(T5Config(**T5_XXL))]
        if recipe == "fill":
            from diffusers import AutoencoderKL

            models += [CLIPTextModel(CLIPTextConfig(**CLIP_L)), AutoencoderKL(**FLUX_VAE)]
        else:
            from diffusers import AutoencoderKLCogVideoX

            models.append(AutoencoderKLCogVideoX())  # its defaults are CogVideoX's VAE
    return sum(p.numel() * 2 for m in models for p in m.parameters())


# ----------------------------------------------------------------------------- extrapolation
def linear_depth(measure, points: list[tuple[int, ...]], full: tuple[int, ...]) -> Peak:
    """Fit peak = a + sum(slope_i * blocks_i) through `points` (1 + number of block kinds of
    them) and evaluate it at `full`; every part is extrapolated the same way."""
    peaks = [measure(*p) for p in points]
    base, deltas = peaks[0], []
    for i in range(len(full)):
        step = next(k for k, p in enumerate(points) if p[i] != points[0][i] and
                    all(p[j] == points[0][j] for j in range(len(full)) if j != i))
        deltas.append((peaks[step], points[step][i] - points[0][i]))

    def at(get):
        value = get(base)
        for i, (peak, span) in enumerate(deltas):
            value += (get(peak) - get(base)) * (full[i] - points[0][i]) / span
        return int(round(value))

    def phase(name):
        keys = sorted({k for p in peaks for k, _ in getattr(p, name)})
        return tuple((k, at(lambda p, k=k: dict(getattr(p, name)).get(k, 0))) for k in keys)

    return Peak(phase("forward"), phase("backward"))


@functools.lru_cache(maxsize=None)
def fill_estimate(micro_batch: int, tokens: int, fsdp: bool, checkpointing: bool = True) -> Peak:
    """Full FLUX.1-Fill depth (19 double + 38 single blocks), from 1-2 blocks of each kind."""
    world = WORLD if fsdp else None

    def one(double, single):
        with fake_world() if fsdp else contextlib.nullcontext():
            return fill_peak(double, single, micro_batch=micro_batch, tokens=tokens, checkpointing=checkpointing,
                             fsdp_world=world)

    # FSDP from 2 double blocks: with one, the root unit stands in for the neighbour block whose
    # all-gather overlaps the current one, and the 1 -> 2 difference is not per-block.
    low = 2 if fsdp else 1  # (2, 2), (3, 2), (2, 3) gave the same bytes at 19 + 38 blocks
    points = [(low, 1), (low + 1, 1), (low, 2)]
    return linear_depth(one, points, (FLUX_FILL["num_layers"], FLUX_FILL["num_single_layers"]))


@functools.lru_cache(maxsize=None)
def cogvideox_estimate(micro_batch: int, res: int, fsdp: bool, checkpointing: bool = True) -> Peak:
    world = WORLD if fsdp else None

    def one(layers):
        with fake_world() if fsdp else contextlib.nullcontext():
            return cogvideox_peak(layers, micro_batch=micro_batch, res=res, checkpointing=checkpointing,
                                  fsdp_world=world)

    low = 2 if fsdp else 1  # as fill_estimate
    return linear_depth(one, [(low,), (low + 1,)], (COGVIDEOX15_5B["num_layers"],))


# ----------------------------------------------------------------------------- launchers
LAUNCHERS = ("1gpu", "8gpu-ddp", "8gpu-fsdp")


def with_launcher(peak: Peak, launcher: str, *, trainable_grad_bytes: int, encoders: int,
                  bucket_view: bool = True) -> Peak:
    """Add what the launcher and the recipe add beside the tracked step: DDP's gradient buckets
    (a second copy of the gradients unless `gradient_as_bucket_view`) and the resident encoders."""
    extra = {}
    if launcher == "8gpu-ddp" and not bucket_view:
        extra["DDP buckets"] = trainable_grad_bytes
    if encoders:
        extra["encoders"] = encoders
    return peak.plus(extra)


@functools.lru_cache(maxsize=None)
def trainable_bytes(recipe: str) -> int:
    """float32 bytes of what the recipe trains at full size (meta device: free)."""
    if recipe == "fill":
        model = _flux_fill(FLUX_FILL["num_layers"], FLUX_FILL["num_single_layers"], 256)
    else:
        model = _realgeneral(COGVIDEOX15_5B["num_layers"], 256)
    return sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


def config_peak(recipe: str, launcher: str, data: dict, encoders_resident: bool, *, bucket_view: bool = True,
                checkpointing: bool = True) -> Peak:
    """The peak of a shipped config (`data`: its data section) under `launcher`."""
    fsdp = launcher == "8gpu-fsdp"
    if recipe == "fill":
        step = fill_estimate(data["micro_batch_size"], data["max_tokens"], fsdp, checkpointing)
    else:
        step = cogvideox_estimate(data["micro_batch_size"], data["res"], fsdp, checkpointing)
    return with_launcher(step, launcher, trainable_grad_bytes=trainable_bytes(recipe),
                         encoders=encoder_bytes(recipe) if encoders_resident else 0, bucket_view=bucket_view)


def shipped(recipe: str) -> tuple[dict, bool]:
    """(data section, encoders on the GPU?) of configs/train/<recipe>.yaml."""
    import yaml

    cfg = yaml.safe_load(open(f"configs/train/{'fill' if recipe == 'fill' else 'cogvideox'}.yaml"))
    # train.fill loads its VAE and text encoders onto the GPU unless every latent and embedding
    # is cached; train.cogvideox always keeps T5 and its VAE there.
    return cfg["data"], recipe != "fill" or not cfg["data"].get("cache_dir")


def table() -> str:
    rows = ["| recipe | launcher | micro-batch | peak per GPU (estimate) | of which activations + temporaries |",
            "|---|---|---|---|---|"]
    for recipe in ("fill", "cogvideox"):
        data, resident = shipped(recipe)
        for launcher in LAUNCHERS:
            peak = config_peak(recipe, launcher, data, resident)
            act = sum(v for k, v in peak.parts if k in ("Activation", "Temp", "ACT", "TEMP"))
            rows.append(f"| {recipe} | {launcher} | {data['micro_batch_size']} | {peak.gib:.1f} GiB | {act / GIB:.1f} GiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
