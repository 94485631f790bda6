"""controlnet_aux's networks, loaded the safe way, for our batched stages.

controlnet_aux's detectors load their checkpoints with a full `torch.load` (a pickle) and
run one image at a time. We keep its network classes and build them here from checkpoints
read with `annotators.models.load_weights` (tensors only). Layer widths are taken from
the checkpoint: the real files give the real networks; the tiny test models are
reduced-width instances of the same classes, loaded by this same code. A checkpoint whose
layer names do not match the class still fails (`load_state_dict(strict=True)`).

Precision on a GPU, net by net: each is loaded in float32 here and cast by `ModelStage.load`
to the stage's dtype (float16 under `dtype: auto`), and `ModelStage.predict` hands it inputs
already in that dtype. HED, M-LSD, OpenPose, MiDaS DPT-Hybrid and NormalBae all run in
float16 as they are: none makes a float32 tensor inside its forward (each passes the
fake-CUDA forward of tests/test_fake_cuda.py in float16); the `.float()` calls that break
float16 nets are in controlnet_aux's detector wrappers (`HEDdetector.__call__`, ...), which
the stages do not use. What float16 does to their maps (HED's VGG activations on 0..255
pixels are the likeliest to come near float16's range) is not measured yet: `make
test-weights` on a GPU box compares them with the float32 detectors.

Importing any `controlnet_aux.*` runs its package `__init__`, which imports every detector
(~3 s) and warns about mediapipe (we never use it); `quiet_import` silences that noise.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import types
import warnings

from annotators.models import load_weights, model_file


def quiet_import(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def cn_util():
    return quiet_import("controlnet_aux.util")


def checkpoint(stage: str, options, filename: str) -> dict:
    """The state dict of `filename` in `options.model` (hub id or folder), tensors only."""
    return load_weights(model_file(stage, options.model, filename, options.revision))


# -- widths from the checkpoint ------------------------------------------------------------
def rebuild_conv(conv, in_channels: int, out_channels: int):
    """`conv` with other channel counts, every other setting kept."""
    import torch

    if not isinstance(conv, (torch.nn.Conv1d, torch.nn.Conv2d)) or conv.groups != 1:
        raise TypeError(f"cannot rebuild a {type(conv).__name__} with groups={conv.groups}")
    return type(conv)(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)


def conform_widths(net, state: dict):
    """Give each convolution of `net` the channel counts its weight in `state` has (a no-op
    for the real checkpoint of the class; HED and OpenPose have no other sized layers)."""
    import torch

    for name, module in list(net.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or not isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
            continue
        out_c, in_c = weight.shape[:2]
        if (out_c, in_c) != (module.out_channels, module.in_channels // module.groups):
            net.set_submodule(name, rebuild_conv(module, in_c, out_c))
    return net


def _load(net, state: dict, what: str):
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the checkpoint is not a {what} checkpoint: {str(e)[:400]}") from None
    return net.float().eval()


# -- the networks --------------------------------------------------------------------------
def hed_net(state: dict):
    """ControlNet's HED (`ControlNetHED.pth`)."""
    hed = quiet_import("controlnet_aux.hed")
    return _load(conform_widths(hed.ControlNetHED_Apache2(), state), state, "ControlNet HED")


def mlsd_net(state: dict):
    """M-LSD large (`mlsd_large_512_fp32.pth`): small enough to keep its real widths."""
    mlsd = quiet_import("controlnet_aux.mlsd.models.mbv2_mlsd_large")
    return _load(mlsd.MobileV2_MLSD_Large(), state, "M-LSD large")


def body_net(state: dict):
    """The OpenPose body model (`body_pose_model.pth`). Its checkpoint names layers without
    the stage prefix (`conv1_1.weight` for `model0.conv1_1.weight`): the mapping is
    controlnet_aux's own `transfer`."""
    model = quiet_import("controlnet_aux.open_pose.model")
    util = quiet_import("controlnet_aux.open_pose.util")
    net = model.bodypose_model()
    try:
        named = util.transfer(net, state)
    except KeyError as e:
        raise ValueError(f"the checkpoint is not an OpenPose body checkpoint (no {e})") from None
    return _load(conform_widths(net, named), named, "OpenPose body")


DPT_HYBRID_WIDTH, DPT_HYBRID_FEATURES = 768, 256


def dpt_hybrid_net(state: dict | None = None, width: int | None = None,
                   features: int | None = None):
    """MiDaS DPT-Hybrid (`dpt_hybrid-midas-501f0c75.pt`), ControlNet 1.0's depth/normal net.

    With the real widths this is `DPTDepthModel(backbone="vitb_rn50_384")`. A narrower ViT
    (the tiny test model) is the same classes built by controlnet_aux's own backbone and
    scratch builders around a timm R50+ViT of that width; DPT's hooks fix the depth at 12
    blocks, so only the width (64 per attention head) and the fusion features shrink.
    """
    dpt = quiet_import("controlnet_aux.midas.midas.dpt_depth")
    if state is not None and isinstance(state.get("model"), dict):  # a training checkpoint
        state = state["model"]
    if state is not None:
        width = int(state["pretrained.model.cls_token"].shape[-1])
        features = int(state["scratch.layer1_rn.weight"].shape[0])
    width, features = width or DPT_HYBRID_WIDTH, features or DPT_HYBRID_FEATURES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if width == DPT_HYBRID_WIDTH:
            net = dpt.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True,
                                    features=features)
        else:
            net = _narrow_dpt_hybrid(dpt, width, features)
    return net if state is None else _load(net, state, "MiDaS DPT-Hybrid")


def _narrow_dpt_hybrid(dpt, width: int, features: int):
    import timm
    import torch

    vit = quiet_import("controlnet_aux.midas.midas.vit")
    blocks = quiet_import("controlnet_aux.midas.midas.blocks")
    # DPTDepthModel.__init__ can only build ViT-B: build a full-width shell on the meta
    # device (no memory, no init cost) for its head and fusion blocks, then give it a
    # narrow backbone made by the same builders DPT uses.
    with torch.device("meta"):
        shell = dpt.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True,
                                  features=features)
    backbone = timm.create_model("vit_base_resnet50_384", pretrained=False, embed_dim=width,
                                 num_heads=max(1, width // 64))
    shell.pretrained = vit._make_vit_b_rn50_backbone(
        backbone, features=[256, 512, width, width], size=[384, 384], hooks=[0, 1, 8, 11],
        vit_features=width, use_vit_only=False, use_readout="project")
    fused = blocks._make_scratch([256, 512, width, width], features, groups=1, expand=False)
    for name in ("layer1_rn", "layer2_rn", "layer3_rn", "layer4_rn"):
        setattr(shell.scratch, name, getattr(fused, name))
    for module in shell.modules():  # the fusion blocks and head, still on meta
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.is_meta for t in own):
            module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()  # convolutions: torch's own random init
    return shell


def normalbae_net(state: dict):
    """NormalBae (`scannet.pt`, ControlNet 1.1's normal annotator): EfficientNet-B5 +
    decoder, real widths (its decoder hard-codes them). The checkpoint holds
    {"model": state dict}, keys maybe prefixed `module.` (a DataParallel save)."""
    nnet = quiet_import("controlnet_aux.normalbae.nets.NNET")
    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints progress
        net = nnet.NNET(types.SimpleNamespace(mode="client", architecture="BN",
                                              pretrained="scannet", sampling_ratio=0.4,
                                              importance_ratio=0.7))
    return _load(net, state, "NormalBae")
