"""Forwards as a GPU would run them, on a machine without one (`tests/fake_cuda.py`): the
harness catches what a GPU raises on, and the Fill step, the RealGeneral loss and the dense
stages' nets pass it. Fake tensors: shapes, dtypes and devices only, no numerics."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

import fake_steps
from fake_cuda import HOST_READ, CudaMixError, FakeCuda, cuda_autocast
from fake_steps import MIXED, SHARED

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the harness itself ----------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, leak: str | None = None):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.register_buffer("offset", torch.ones(8))
        self.table = torch.ones(8)  # a plain attribute: `Module.to` leaves it on the CPU
        self.leak = leak

    def forward(self, x):
        y = self.linear(x) + self.offset
        if self.leak == "attribute":
            y = y * self.table
        if self.leak == "no_device":
            y = y + torch.arange(8.0)  # made without device=
        return y * torch.tensor(2.0)  # a 0-dim CPU tensor: allowed on a GPU too


def test_a_forward_on_fake_cuda_runs_there_and_the_real_weights_come_back():
    net = _Net()
    weight = net.linear.weight
    with FakeCuda(net, dtype=torch.float16) as gpu:
        assert net.linear.weight.device.type == "cuda" and net.offset.dtype == torch.float16
        out = net(gpu.tensor(torch.randn(2, 8), torch.float16))
    assert out.device.type == "cuda" and out.dtype == torch.float16 and out.shape == (2, 8)
    assert net.linear.weight is weight and net.offset.device.type == "cpu"


@pytest.mark.parametrize("leak", ["attribute", "no_device"])
def test_a_cpu_tensor_in_a_cuda_forward_fails(leak):
    net = _Net(leak)
    with pytest.raises(CudaMixError, match="cpu"), FakeCuda(net) as gpu:
        net(gpu.tensor(torch.randn(2, 8)))


def test_float32_input_into_a_float16_net_fails():
    net = _Net()
    with pytest.raises(CudaMixError, match="float16"), FakeCuda(net, dtype=torch.float16) as gpu:
        net(gpu.tensor(torch.randn(2, 8)))  # what controlnet_aux's `.float()` feeds a half net


def test_a_cpu_generator_drawing_on_cuda_fails_and_drawing_on_its_device_passes():
    generator = torch.Generator().manual_seed(0)
    with FakeCuda():
        with pytest.raises(CudaMixError, match="cpu generator draws on cuda"):
            torch.randn(4, generator=generator, device="cuda")
        moved = torch.randn(4, generator=generator, device=generator.device).to("cuda")
    assert moved.device.type == "cuda"


def test_cuda_autocast_applies_on_fake_tensors():
    net = torch.nn.Linear(8, 8)
    with FakeCuda(net) as gpu, cuda_autocast(torch.bfloat16):
        assert net(gpu.tensor(torch.randn(2, 8))).dtype == torch.bfloat16


# -- the Fill transformer step ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fill_transformer(tiny_fill_dir):
    return fake_steps.fill_transformer(tiny_fill_dir)


@pytest.mark.parametrize("layouts", [SHARED, MIXED], ids=["shared", "per_sample"])
def test_fill_step_runs_on_fake_cuda(fill_transformer, layouts):
    batch = fake_steps.fill_batch(fill_transformer, layouts)
    assert batch.shared_positions == (layouts is SHARED)
    with FakeCuda(fill_transformer) as gpu, cuda_autocast(torch.bfloat16):
        pred, loss = fake_steps.fill_step(fill_transformer, batch, gpu)
    assert pred.device.type == "cuda" and pred.shape == batch.latents.shape and pred.dtype == torch.float32
    assert loss.device.type == "cuda" and loss.shape == ()
    assert fill_transformer.device.type == "cpu"  # the real weights are back


def test_fill_step_with_a_cpu_table_fails(fill_transformer, monkeypatch):
    """The harness on the real step: a rotary table taken back to the CPU (a plausible slip in
    the per-sample RoPE path) meets CUDA activations."""
    from train.visualcloze import model

    batch = fake_steps.fill_batch(fill_transformer, MIXED)
    monkeypatch.setattr(model, "_rotate", lambda x, cos, sin: x * cos.cpu()[:, :, None, :])
    with pytest.raises(CudaMixError), FakeCuda(fill_transformer) as gpu, cuda_autocast(torch.bfloat16):
        fake_steps.fill_step(fill_transformer, batch, gpu)


# -- RealGeneral: the CogVideoX forward and diffusion_loss -------------------------------------
@pytest.fixture(scope="module")
def realgeneral(tiny_cogvideox_dir):
    return fake_steps.realgeneral(tiny_cogvideox_dir)


def test_realgeneral_loss_on_fake_cuda_with_a_cpu_generator(realgeneral, monkeypatch):
    """The recipe's tests pass a CPU generator to diffusion_loss; on a GPU it must draw where
    the generator is and move the draw (issue 33 item 2: it raised there)."""
    from train.realgeneral.recipe import diffusion_loss

    parts, model = realgeneral
    with fake_steps.realgeneral_on_fake_cuda(parts, model, monkeypatch):
        loss = diffusion_loss(parts, model, fake_steps.pairs(), torch.Generator().manual_seed(0), drop=[True, False])
    assert loss.device.type == "cuda" and loss.dtype == torch.float32 and loss.shape == ()


# -- the dense stages' nets --------------------------------------------------------------------
@pytest.mark.parametrize("test_id", ["hed", "mlsd", "openpose", "normal", "midas_normal", "normalbae", "depth",
                                     "uniformer"])
def test_dense_stage_forward_on_fake_cuda_in_half_precision(test_id, tiny_models):
    """What `device: auto` / `dtype: auto` give on a GPU (CUDA, float16): the stage's own
    forward (normalising, the net, the fusion on the device) up to its first host read."""
    from dense_helpers import SIZE, make_stage

    stage = make_stage(test_id, tiny_models)
    stage.load()  # float32 on the CPU, then what load() does on a GPU
    stage.device, stage.dtype = torch.device("cuda"), torch.float16
    stage.model.to(torch.float16)
    if hasattr(stage.model, "keep_refinement_float32"):
        stage.model.keep_refinement_float32()
    net, seen = stage.model, []

    def recorded(*args, **kwargs):
        out = net(*args, **kwargs)
        leaves = list(out.values()) if isinstance(out, Mapping) else out  # transformers' ModelOutput
        seen.extend(t for t in torch.utils._pytree.tree_leaves(leaves) if isinstance(t, torch.Tensor))
        return out

    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    stage.model = recorded
    try:
        with FakeCuda(net) as gpu:
            x = gpu.tensor(torch.from_numpy(pixels)).permute(0, 3, 1, 2).to(stage.dtype)  # as predict()
            try:
                stage.forward(x, (SIZE, SIZE))
            except HOST_READ:
                pass  # the outputs are on their way to the host: the GPU part is done
            except RuntimeError as e:
                if "numpy() is not supported" not in str(e):
                    raise
    finally:
        stage.model = net
    assert seen and all(t.device.type == "cuda" for t in seen)


def test_controlnet_aux_detector_around_a_half_net_fails_as_on_a_gpu(tiny_models):
    """Issue 33 item 1, reproduced without a GPU: controlnet_aux's HED detector `.float()`s
    its pixels, which a float16 net on CUDA refuses (hence the tests' float32 references)."""
    from annotators.controlnet_nets import quiet_import
    from dense_helpers import SIZE, make_stage

    stage = make_stage("hed", tiny_models)
    stage.load()
    net = stage.model.half()
    detector = quiet_import("controlnet_aux.hed").HEDdetector(net)
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    with pytest.raises(CudaMixError, match=r"conv2d: Input type \(float\) and bias type \(c10::Half\)"), FakeCuda(net):
        detector(image, detect_resolution=SIZE, image_resolution=SIZE, output_type="np")
