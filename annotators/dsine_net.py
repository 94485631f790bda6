"""DSINE, the surface-normal network of Bae & Davison, "Rethinking Inductive Biases for
Surface Normal Estimation" (CVPR 2024): the architecture of the released `dsine.pt`
(experiment `exp001_cvpr2024`, the repository's `DSINE_v02`), written here so that the
released state dict loads strictly, and loaded through one `from_pretrained(id_or_path)`.

No package on PyPI ships DSINE (checked: controlnet-aux 0.0.10, geffnet 1.0.2,
depth2normal 2.0.1). Its encoder is geffnet's `tf_efficientnet_b5_ap`; timm's
`tf_efficientnet_b5` (the same author's maintained successor) has the same 852 state-dict
keys and shapes and gives the same features (checked with one set of weights in both, on
the CPU: identical to the bit), so the encoder is timm's.

The network, as the paper describes it:
  1. EfficientNet-B5 features at 1/8, 1/16 and 1/32 of the input (the raw 1x1 head conv).
  2. Per-pixel ray directions from the camera intrinsics, (u - cx) / fx and (v - cy) / fy
     at each feature scale, concatenated to every decoder input ("ray encoding").
  3. A decoder (weight-standardised convs + GroupNorm) to 1/8: an initial normal, a
     context feature and a GRU hidden state. Normals are kept at an angle of at most
     90 - 0.6 degrees from their pixel's ray ("ray ReLU": a visible surface faces the camera).
  4. Rotation refinement, `iterations` times: a ConvGRU updates the hidden state; for each
     pixel, each of its 5x5 neighbours' normals is rotated about an axis derived from an
     in-plane offset (so that the axis lies in the neighbour's tangent plane) by a predicted
     angle in (0, pi), and the rotated normals are averaged with predicted weights.
  5. Convex upsampling x8 (a softmax over the 3x3 neighbourhood per output pixel).

Output: unit normals in DSINE's camera frame, x right, y down, z forward (away from the
camera); a wall facing the camera is n = (0, 0, 1) (DSINE's README), i.e. the vector
points along the viewing ray, the negative of the outward normal.

Checked against the public repository's `DSINE_v02` (run once, outside this project, on
one set of random weights in both): the same 918 state-dict keys and shapes, normals within
2e-6 after 0, 1 and 5 refinements, 0.001 % of 8-bit values one level apart.

Weights: `model` is a local folder or a hub id holding `dsine.safetensors` or `dsine.pt`
(the released file: `{"model": state_dict, ...}`, read with `torch.load(weights_only=True)`),
and optionally `config.json` with `DSINEConfig` fields (absent: the released architecture).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from annotators.models import is_local, load_weights, model_file

WEIGHTS = ("dsine.safetensors", "dsine.pt")  # safetensors first where both exist
CONFIG = "config.json"
DOWNSAMPLE = 8  # the decoder stops at 1/8; convex upsampling restores the rest
GROUPS = 8  # GroupNorm groups in the decoder's up-sampling blocks


@dataclass
class DSINEConfig:
    """The architecture; the defaults are the released `dsine.pt` (EfficientNet-B5, the
    decoder of `NNET_decoder_NF 2048`, 5x5 refinement neighbourhood)."""

    channel_multiplier: float = 1.6  # EfficientNet-B5
    depth_multiplier: float = 2.2
    decoder_features: int = 2048
    feature_dim: int = 64  # context features fed to the GRU
    hidden_dim: int = 64  # GRU state
    decoder_head_dim: int = 128
    refine_head_dim: int = 64
    neighbourhood: int = 5  # side of the refinement window
    ray_relu_eps: float = 0.01

    @classmethod
    def from_dict(cls, values: dict, where: str = CONFIG) -> "DSINEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown DSINE config keys {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**values)


# -- building blocks ---------------------------------------------------------------------
def efficientnet(config: DSINEConfig) -> nn.Module:
    """timm's TF-ported EfficientNet at the config's multipliers, without pooling or
    classifier (DSINE replaces both with identities: no keys in the checkpoint)."""
    from timm.models.efficientnet import _gen_efficientnet

    # what timm's `tf_efficientnet_b5` does, with the multipliers as parameters (its
    # registered constructors fix them); tests check that B5's are timm's B5
    return _gen_efficientnet("tf_efficientnet_b5", channel_multiplier=config.channel_multiplier,
                             depth_multiplier=config.depth_multiplier, bn_eps=1e-3,  # TF's BN eps
                             pad_type="same", num_classes=0, global_pool="")


class Encoder(nn.Module):
    def __init__(self, config: DSINEConfig):
        super().__init__()
        self.original_model = efficientnet(config)
        blocks = self.original_model.blocks
        self.channels = (_out_channels(blocks[2]), _out_channels(blocks[4]),
                         self.original_model.conv_head.out_channels)

    def forward(self, x):
        net = self.original_model
        x = net.bn1(net.conv_stem(x))  # BatchNormAct2d: BN + SiLU
        kept = []
        for i, stage in enumerate(net.blocks):
            x = stage(x)
            if i in (2, 4):
                kept.append(x)
        return kept[0], kept[1], net.conv_head(x)  # 1/8, 1/16, 1/32 (before bn2)


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    conv = getattr(last, "conv_pwl", None) or last.conv_pw
    return conv.out_channels


class StandardisedConv2d(nn.Conv2d):
    """A conv whose filters are standardised (zero mean, unit std per output channel)
    before use: weight standardisation, paired with GroupNorm in the decoder."""

    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate, two standardised 3x3 convs + GN."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self._net = nn.Sequential(
            StandardisedConv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(GROUPS, out_channels), nn.LeakyReLU(),
            StandardisedConv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(GROUPS, out_channels), nn.LeakyReLU())

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self._net(torch.cat([x, skip], dim=1))


def head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out_channels, 1))


class Decoder(nn.Module):
    def __init__(self, config: DSINEConfig, encoder_channels: tuple[int, int, int]):
        super().__init__()
        c8, c16, c32 = encoder_channels
        nf = config.decoder_features
        self.conv2 = nn.Conv2d(c32 + 2, nf, 1)
        self.up1 = UpBlock(nf + c16 + 2, nf // 2)
        self.up2 = UpBlock(nf // 2 + c8 + 2, nf // 4)
        width, hidden = nf // 4 + 2, config.decoder_head_dim
        self.normal_head = head(width, hidden, 3)
        self.feature_head = head(width, hidden, config.feature_dim)
        self.hidden_head = head(width, hidden, config.hidden_dim)

    def forward(self, features, uv8, uv16, uv32):
        f8, f16, f32 = features
        x = self.conv2(torch.cat([f32, uv32], dim=1))
        x = self.up1(x, torch.cat([f16, uv16], dim=1))
        x = self.up2(x, torch.cat([f8, uv8], dim=1))
        x = torch.cat([x, uv8], dim=1)
        return (unit(self.normal_head(x), dim=1), self.feature_head(x),
                self.hidden_head(x))


class ConvGRU(nn.Module):
    def __init__(self, hidden_dim: int, input_dim: int, kernel: int):
        super().__init__()
        pad = (kernel - 1) // 2
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel, padding=pad)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel, padding=pad)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, kernel, padding=pad)

    def forward(self, h, x):
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


# -- geometry --------------------------------------------------------------------------------
def unit(x, dim: int = 1):
    """`F.normalize(x, dim=dim)` (same eps), as a sum of squares: torch's CPU norm kernel
    reduces a strided dim slowly (3.4 s of a 3.9 s tiny forward at 512², measured)."""
    return x / (x * x).sum(dim=dim, keepdim=True).sqrt().clamp_min(1e-12)


def ray_relu(normal, ray, eps: float):
    """Move each normal along its ray so that cos(normal, ray) >= eps, renormalised."""
    norms = ((normal * normal).sum(dim=1, keepdim=True) * (ray * ray).sum(dim=1, keepdim=True))
    cos = (normal * ray).sum(dim=1, keepdim=True) / norms.sqrt().clamp_min(1e-8)
    return unit(normal + ray * (torch.relu(cos - eps) + eps - cos), dim=1)


def rotate(vectors, axes, angles):
    """Rodrigues' rotation of `vectors` (dim 1: xyz) about unit `axes` by `angles`
    (right-handed); a zero axis leaves the vector as it is."""
    angles = angles * ((axes * axes).sum(dim=1, keepdim=True) > 0)
    cos, sin = torch.cos(angles), torch.sin(angles)
    along = (axes * vectors).sum(dim=1, keepdim=True)
    return vectors * cos + torch.cross(axes, vectors, dim=1) * sin + axes * along * (1 - cos)


def neighbours(x, size: int):
    """B x C x H x W -> B x C x size² x H x W: each pixel's window, edges replicated."""
    b, c, h, w = x.shape
    pad = (size - 1) // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return F.unfold(x, (size, size)).view(b, c, size * size, h, w)


def convex_upsample(x, mask, factor: int):
    """Each output pixel a softmax-weighted mix of its coarse pixel's 3x3 neighbourhood."""
    b, c, h, w = x.shape
    weights = torch.softmax(mask.view(b, 1, 9, factor, factor, h, w), dim=2)
    windows = neighbours(x, 3).view(b, c, 9, 1, 1, h, w)
    up = (weights * windows).sum(dim=2)  # b, c, k, k, h, w
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, c, factor * h, factor * w)


def pixel_centres(h: int, w: int, like):
    """1 x 2 x h x w: (column + 0.5, row + 0.5)."""
    v, u = torch.meshgrid(torch.arange(h, device=like.device, dtype=like.dtype) + 0.5,
                          torch.arange(w, device=like.device, dtype=like.dtype) + 0.5,
                          indexing="ij")
    return torch.stack([u, v])[None]


class Intrinsics:
    """A camera as DSINE uses it: `camera` B x 4 = (fx, fy, cx, cy) in pixels of the padded
    input (height x width), the principal point in pixel-edge coordinates (the top-left
    pixel spans 0..1); `at(h, w)` rescales them to a feature map of that size."""

    def __init__(self, camera, height: int, width: int):
        self.fx, self.fy, self.cx, self.cy = (camera[:, i].view(-1, 1, 1) for i in range(4))
        self.height, self.width = height, width

    def at(self, h: int, w: int):
        sx, sy = w / self.width, h / self.height
        return self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy

    def uv(self, h: int, w: int, like):
        """B x 2 x h x w: the ray's (x / z, y / z) through each pixel centre."""
        fx, fy, cx, cy = self.at(h, w)
        centres = pixel_centres(h, w, like)
        return torch.stack([(centres[:, 0] - cx) / fx, (centres[:, 1] - cy) / fy], dim=1)


def camera_from_fov(fov_degrees: float, height: int, width: int, left: int = 0, top: int = 0,
                    batch: int = 1, device=None):
    """B x 4 (fx, fy, cx, cy): DSINE's assumption for an unknown camera, `fov_degrees`
    across the longer side of the (unpadded) image and the principal point at its centre;
    `left` / `top`: the padding added before it."""
    f = (max(height, width) / 2.0) / math.tan(math.radians(fov_degrees / 2.0))
    row = torch.tensor([f, f, left + width / 2.0, top + height / 2.0], dtype=torch.float32,
                       device=device)
    return row.expand(batch, 4).clone()


# -- the network -----------------------------------------------------------------------------
class DSINENet(nn.Module):
    def __init__(self, config: DSINEConfig | None = None):
        super().__init__()
        self.config = config = config or DSINEConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, self.encoder.channels)
        k, hidden = config.neighbourhood, config.hidden_dim
        self.gru = ConvGRU(hidden, config.feature_dim + 2, k)
        width, mid = hidden + 2, config.refine_head_dim
        self.prob_head = head(width, mid, k * k)  # weight of each neighbour
        self.xy_head = head(width, mid, 2 * k * k)  # in-plane offset -> rotation axis
        self.angle_head = head(width, mid, k * k)  # rotation angle
        self.up_prob_head = head(width, mid, 9 * DOWNSAMPLE * DOWNSAMPLE)

    def keep_refinement_float32(self) -> "DSINENet":
        """After `.to(float16)`: the GRU and refinement heads back to float32, so that the
        refinement's geometry (1e-8 guards, rotations, renormalising) runs in float32
        while the encoder and decoder, nearly all of the work, run in half precision."""
        for module in (self.gru, self.prob_head, self.xy_head, self.angle_head,
                       self.up_prob_head):
            module.float()
        return self

    def forward(self, x, camera, iterations: int = 5):
        """x: B x 3 x H x W, ImageNet-normalised, H and W multiples of 32; camera: B x 4
        (`Intrinsics`) -> B x 3 x H x W unit normals, after `iterations` refinements.
        The encoder and decoder run in the weights' dtype, the refinement's geometry in
        the refinement modules' (float32 after `keep_refinement_float32`)."""
        _, _, height, width = x.shape
        if height % 32 or width % 32:
            raise ValueError(f"DSINE needs sides that are multiples of 32, got {width}x{height}")
        intrinsics = Intrinsics(camera.float(), height, width)
        net_dtype = self.decoder.conv2.weight.dtype
        geo = self.gru.convz.weight.dtype
        like = torch.empty((), device=x.device, dtype=geo)
        uv = {s: intrinsics.uv(height // s, width // s, like).to(net_dtype) for s in (8, 16, 32)}
        features = self.encoder(x.to(net_dtype))
        normal, context, hidden = (t.to(geo) for t in self.decoder(features, uv[8], uv[16], uv[32]))
        uv8 = uv[8].to(geo)
        ray8 = unit(torch.cat([uv8, torch.ones_like(uv8[:, :1])], dim=1), dim=1)
        normal = ray_relu(normal, ray8, self.config.ray_relu_eps)
        context = torch.cat([context, uv8], dim=1)
        if iterations == 0:
            return self._upsample(hidden, normal, uv8)
        for _ in range(iterations):
            hidden, normal, up = self._refine(hidden, context, normal, uv8, ray8, intrinsics)
        return up

    def _upsample(self, hidden, normal, uv8):
        mask = self.up_prob_head(torch.cat([hidden, uv8], dim=1))
        return unit(convex_upsample(normal, mask, DOWNSAMPLE), dim=1)

    def _refine(self, hidden, context, normal, uv8, ray8, intrinsics: Intrinsics):
        k = self.config.neighbourhood
        b, _, h, w = normal.shape
        hidden = self.gru(hidden, context)
        state = torch.cat([hidden, uv8], dim=1)
        weight = torch.sigmoid(self.prob_head(state)).unsqueeze(1)  # B,1,k²,h,w
        offset = unit(self.xy_head(state).view(b, 2, k * k, h, w), dim=1)
        angle = torch.sigmoid(self.angle_head(state)).unsqueeze(1) * math.pi
        near = neighbours(normal, k)  # B,3,k²,h,w
        fx, fy, cx, cy = (t.unsqueeze(1) for t in intrinsics.at(h, w))  # B,1,1,1
        centre = neighbours(pixel_centres(h, w, normal), k)  # 1,2,k²,h,w
        du, dv = offset[:, 0] / fx, offset[:, 1] / fy
        tu = (centre[:, 0] + offset[:, 0] - cx) / fx
        tv = (centre[:, 1] + offset[:, 1] - cy) / fy
        nx, ny, nz = near[:, 0], near[:, 1], near[:, 2]
        # the depth change along the offset that keeps the point on the neighbour's plane
        denom = tu * nx + tv * ny + nz
        denom = torch.where(denom.abs() < 1e-8, 1e-8 * denom.sign(), denom)
        dz = -(du * nx + dv * ny) / denom
        axis = unit(torch.stack([du + dz * tu, dv + dz * tv, dz], dim=1), dim=1)
        axis = torch.where(torch.isfinite(axis).all(dim=1, keepdim=True), axis, 0.0)
        rotated = unit(rotate(near, axis, angle), dim=1)
        rotated = ray_relu(rotated, ray8.unsqueeze(2), self.config.ray_relu_eps)
        normal = unit((weight * rotated).sum(dim=2), dim=1)
        return hidden, normal, self._upsample(hidden, normal, uv8)


# -- loading ---------------------------------------------------------------------------------
def checkpoint_state(raw: dict) -> dict:
    """The state dict of a DSINE checkpoint: the released file nests it under "model";
    a DataParallel save prefixes "module."."""
    state = raw.get("model", raw) if isinstance(raw.get("model"), dict) else raw
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _find(model: str, name: str, revision: str | None, stage: str) -> Path | None:
    if is_local(model):
        path = Path(model).expanduser() / name
        return path if path.is_file() else None
    try:
        return model_file(stage, model, name, revision)
    except FileNotFoundError:
        return None


def from_pretrained(model: str, revision: str | None = None, stage: str = "normal") -> DSINENet:
    """A DSINE from a local folder or a hub id (in the local HF cache): `config.json` if
    present (else the released architecture), weights `dsine.safetensors` or `dsine.pt`,
    loaded strictly; float32, eval mode."""
    config_path = _find(model, CONFIG, revision, stage)
    config = DSINEConfig()
    if config_path is not None:
        config = DSINEConfig.from_dict(json.loads(config_path.read_text()), str(config_path))
    for name in WEIGHTS:
        path = _find(model, name, revision, stage)
        if path is not None:
            break
    else:
        raise FileNotFoundError(
            f"stage {stage!r}: {model} holds none of {', '.join(WEIGHTS)}; fetch the released "
            f"weights once (`huggingface-cli download {model} dsine.pt`) or point `model:` at "
            "a folder holding them")
    with torch.device("meta"):
        net = DSINENet(config)
    state = checkpoint_state(load_weights(path))
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a DSINE checkpoint of this architecture "
                         f"({config_path or 'the released config'}): "
                         f"{' '.join(str(e).split())[:400]}") from None
    return net.float().eval()


def save_pretrained(net: DSINENet, folder, layout: str = "pt") -> Path:
    """Write `config.json` and the weights: `dsine.pt` as the released file lays it out
    (`{"model": state_dict}`) or `dsine.safetensors`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(asdict(net.config), indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / WEIGHTS[0]))
    elif layout == "pt":
        torch.save({"model": state}, folder / WEIGHTS[1])
    else:
        raise ValueError(f"layout {layout!r} is not one of pt, safetensors")
    return folder
