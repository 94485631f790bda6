"""Tiny random models of the dense stages (hed, mlsd, openpose, normal: DSINE, and the
normal options midas_normal and normalbae, depth, uniformer), each in its production layout.

controlnet_aux checkpoints keep their real file names and key layouts; the big nets are
reduced-width instances of the same classes (the loaders in `annotators.controlnet_nets`
read widths from the checkpoint), M-LSD and NormalBae keep their real widths (M-LSD is
6 MB; NormalBae's decoder hard-codes its widths, so it is saved in float16, which the
loader casts back). transformers models are `save_pretrained` folders of tiny configs with
their image processor's config beside them, as on the hub.
"""

from __future__ import annotations

from pathlib import Path

from annotators.tiny_models import tiny_model

WIDTH_DIVISOR = 8


def narrowed(net, width_of):
    """`net` with every convolution / batch norm of width c rebuilt at width_of(c)."""
    import torch

    from annotators.controlnet_nets import rebuild_conv

    for name, module in list(net.named_modules()):
        if isinstance(module, torch.nn.Conv2d) and module.groups == 1:
            net.set_submodule(name, rebuild_conv(module, width_of(module.in_channels),
                                                 width_of(module.out_channels)))
        elif isinstance(module, torch.nn.BatchNorm2d):
            net.set_submodule(name, torch.nn.BatchNorm2d(width_of(module.num_features)))
    return net


def _save(state: dict, path: Path, half: bool = False) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    torch.save(state, path)
    return path


@tiny_model("hed")
def build_hed(folder: Path, seed: int) -> Path:
    from annotators.controlnet_nets import quiet_import

    hed = quiet_import("controlnet_aux.hed")
    # 3 (RGB in) and 1 (side outputs) are fixed by the forward; the rest shrinks
    net = narrowed(hed.ControlNetHED_Apache2(),
                   lambda c: c if c in (1, 3) else c // WIDTH_DIVISOR)
    _save(net.state_dict(), folder / "ControlNetHED.pth")
    return folder


@tiny_model("mlsd")
def build_mlsd(folder: Path, seed: int) -> Path:
    from annotators.controlnet_nets import quiet_import

    mlsd = quiet_import("controlnet_aux.mlsd.models.mbv2_mlsd_large")
    _save(mlsd.MobileV2_MLSD_Large().state_dict(), folder / "mlsd_large_512_fp32.pth")
    return folder


@tiny_model("openpose")
def build_openpose(folder: Path, seed: int) -> Path:
    import torch

    from annotators.controlnet_nets import quiet_import

    model = quiet_import("controlnet_aux.open_pose.model")
    stage_in = 38 + 19 + 128  # stages 2-6 read PAFs (38) + heatmaps (19) + features (128)
    fixed = {3: 3, 38: 38, 19: 19, stage_in: 38 + 19 + 128 // WIDTH_DIVISOR}
    net = narrowed(model.bodypose_model(), lambda c: fixed.get(c, c // WIDTH_DIVISOR))
    _draw_one_arm(net)
    # the real file names layers without their stage prefix (controlnet_aux `transfer`)
    state = {k.split(".", 1)[1]: v for k, v in net.state_dict().items()}
    _save(state, folder / "body_pose_model.pth")
    return folder


def _draw_one_arm(net, image_weight: float = 0.02) -> None:
    """A random net finds nobody, and then the decoding and drawing never run in the demo.
    So the heatmap branches of the last two stages are set by hand: stage 5 makes a
    constant, and nine 7x7 box filters in a row (four in stage 5, five in stage 6, the
    first of which also takes a little of the image, so outputs still depend on the input)
    turn it into a smooth dome through their zero padding: one peak per map. Boxes over
    only the left or right half of a kernel move a part's dome sideways, so that neck,
    right shoulder, elbow and wrist peak left to right; the part-affinity fields all point
    right, and OpenPose's grouping joins the four parts into one person. Nonsense poses,
    real code paths."""
    import torch

    def convs(seq):
        return [m for m in seq if isinstance(m, torch.nn.Conv2d)]

    full, left, right = range(7), range(4), range(3, 7)
    # BODY_18 part -> kernel columns of stage 6's Mconv2..5: a right-half box pulls the
    # dome left (cross-correlation), a left-half box pushes it right
    arm = {1: (right,) * 4, 2: (full, full, right, right), 3: (full, full, left, left),
           4: (left,) * 4}
    parts = sorted(arm)

    def box(conv, cols_of):
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(min(conv.in_channels, conv.out_channels)):
            cols = list(cols_of(c))
            conv.weight[c, c, :, cols] = 1.0 / (7 * len(cols))

    def identity(conv, scale=1.0, only=None):
        conv.weight.zero_()
        conv.bias.zero_()
        for c in (only if only is not None else range(conv.out_channels)):
            conv.weight[c, c, 0, 0] = scale

    with torch.no_grad():
        five, six = convs(net.model5_2), convs(net.model6_2)
        five[0].weight.zero_()
        five[0].bias.fill_(1.0)  # a constant map...
        for conv in five[1:5]:
            box(conv, lambda c: full)  # ...domed by the zero padding
        identity(five[5])
        identity(five[6], only=parts)  # stage 5's heatmaps: domes for the four parts
        first = six[0]  # reads stage 5's (PAFs 38, heatmaps 19, features)
        first.weight.mul_(image_weight)
        first.bias.zero_()
        for part in parts:
            first.weight[part, 38 + part] = 1.0 / 49
        for layer, conv in enumerate(six[1:5]):
            box(conv, lambda c, layer=layer: arm[c][layer] if c in arm else full)
        identity(six[5])
        identity(six[6], scale=0.8, only=parts)  # peaks of ~0.6; other parts stay 0
        paf = convs(net.model6_1)[-1]
        paf.weight.mul_(0.1)
        paf.bias.zero_()
        paf.bias[0::2] = 0.6  # the x components of the 19 limb fields


TINY_DSINE = dict(channel_multiplier=0.25, depth_multiplier=0.3, decoder_features=64,
                  feature_dim=8, hidden_dim=8, decoder_head_dim=16, refine_head_dim=16)


@tiny_model("normal")
def build_dsine(folder: Path, seed: int) -> Path:
    """DSINE's architecture (EfficientNet encoder at B5's block layout, ray encoding,
    rotation refinement over 5x5 neighbours) at narrow widths and one or two blocks per
    stage, saved as the released `dsine.pt` is laid out (`{"model": state_dict}`) with a
    `config.json` giving the widths."""
    from annotators.dsine_net import DSINEConfig, DSINENet, save_pretrained

    return save_pretrained(DSINENet(DSINEConfig(**TINY_DSINE)), folder, layout="pt")


@tiny_model("midas_normal")
def build_midas_normal(folder: Path, seed: int) -> Path:
    from annotators.controlnet_nets import dpt_hybrid_net

    net = dpt_hybrid_net(width=64, features=32)
    _save(net.state_dict(), folder / "dpt_hybrid-midas-501f0c75.pt")
    return folder


@tiny_model("normalbae")
def build_normalbae(folder: Path, seed: int) -> Path:
    import contextlib
    import io
    import types

    import torch

    from annotators.controlnet_nets import quiet_import

    nnet = quiet_import("controlnet_aux.normalbae.nets.NNET")
    with contextlib.redirect_stdout(io.StringIO()):
        net = nnet.NNET(types.SimpleNamespace(mode="client", architecture="BN",
                                              pretrained="scannet", sampling_ratio=0.4,
                                              importance_ratio=0.7))
    state = {f"module.{k}": v.half() if v.is_floating_point() else v
             for k, v in net.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, folder / "scannet.pt")  # the real file's layout
    return folder


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@tiny_model("depth")
def build_depth(folder: Path, seed: int) -> Path:
    """Depth Anything V2's architecture (DINOv2 backbone, DPT head), a few channels wide,
    with Depth-Anything-V2-*-hf's image processor settings."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation,
                              Dinov2Config, DPTImageProcessor)

    backbone = Dinov2Config(image_size=518, patch_size=14, hidden_size=32, num_hidden_layers=4,
                            num_attention_heads=2, intermediate_size=64,
                            out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8, depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518},
                      keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
                      do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                      do_pad=False).save_pretrained(folder)
    return folder


@tiny_model("uniformer")
def build_uniformer(folder: Path, seed: int) -> Path:
    """An ADE20K UperNet (ConvNeXt backbone) as openmmlab/upernet-convnext-* are, tiny,
    150 classes, with their SegformerImageProcessor settings."""
    from transformers import (ConvNextConfig, SegformerImageProcessor, UperNetConfig,
                              UperNetForSemanticSegmentation)

    backbone = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32,
                           auxiliary_channels=8, use_auxiliary_head=True, num_labels=150)
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(do_resize=True, size={"height": 512, "width": 512}, resample=2,
                            do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                            do_reduce_labels=False).save_pretrained(folder)
    return folder
