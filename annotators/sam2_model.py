"""SAM 2.1 through the `sam2` package: loading, and one image-encoder pass per batch.

`model:` is a hub id of Meta's checkpoints (`facebook/sam2.1-hiera-large`, ...: the model
config comes from the installed `sam2` package, the checkpoint from the local HF cache) or
a local folder laid out as those repos are: one `<config>.yaml` and one `<checkpoint>.pt`
(what `huggingface-cli download facebook/sam2.1-hiera-large` fetches, or the tiny test
model). A folder's YAML is a Hydra model config; only `sam2.` classes may be named in its
`_target_`s, so that a config file cannot make us build anything else. Checkpoints are read
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

from annotators.base import ConfigError
from annotators.models import is_local, load_weights, model_dir, model_file

# The settings `sam2.build_sam.build_sam2` adds for inference (it calls them
# "postprocessing"): fall back to the multimask output when the single mask is unstable.
_INFERENCE_DECODER_ARGS = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def hub_files(model: str) -> tuple[str, str]:
    """(config file inside the sam2 package, checkpoint name in the repo) of a hub id."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    try:
        return HF_MODEL_ID_TO_FILENAMES[model]
    except KeyError:
        raise ConfigError(f"SAM2 model {model!r} is neither a local folder nor one of the "
                          f"checkpoints the sam2 package knows: "
                          f"{', '.join(HF_MODEL_ID_TO_FILENAMES)}") from None


def _one(folder: Path, pattern: str, stage: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"stage {stage!r}: SAM2 folder {folder} must hold exactly one "
                                f"{pattern} (found {[p.name for p in found]})")
    return found[0]


def check_targets(node, stage: str, where: str = "model") -> None:
    """Every `_target_` of a Hydra config names a class of the sam2 package."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith("sam2."):
            raise ConfigError(f"stage {stage!r}: the SAM2 config names {target!r} at {where}; "
                              "only sam2.* classes are built from a model folder")
        for k, v in node.items():
            check_targets(v, stage, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, stage, f"{where}[{i}]")


def model_config(stage: str, model: str, revision: str | None = None):
    """(OmegaConf model config, checkpoint path) of `model`."""
    import sam2
    from omegaconf import OmegaConf

    if is_local(model):
        folder = Path(model_dir(stage, model))
        config_path, ckpt = _one(folder, "*.yaml", stage), _one(folder, "*.pt", stage)
    else:
        config_name, ckpt_name = hub_files(model)
        config_path = Path(sam2.__path__[0]) / config_name
        ckpt = model_file(stage, model, ckpt_name, revision)
    cfg = OmegaConf.load(config_path)
    if "model" not in cfg:
        raise ConfigError(f"stage {stage!r}: {config_path} has no `model:` section "
                          "(a SAM2 Hydra model config)")
    check_targets(OmegaConf.to_container(cfg.model, resolve=False), stage)
    cfg.model.sam_mask_decoder_extra_args = dict(_INFERENCE_DECODER_ARGS)
    return cfg.model, ckpt


def load_sam2(stage: str, model: str, revision: str | None, device):
    """The SAM2Base of `model` on `device`, in eval mode (float32 weights; the stage runs
    half precision through autocast on a GPU)."""
    import torch
    from hydra.utils import instantiate

    cfg, ckpt = model_config(stage, model, revision)
    net = instantiate(cfg, _recursive_=True)
    state = load_weights(ckpt)
    state = state.get("model", state)  # Meta's checkpoints nest the weights under "model"
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"stage {stage!r}: {ckpt} does not fit the config's architecture "
                         f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    with torch.no_grad():
        return net.to(device).eval()


def batched_predictor(net, **kwargs):
    """A SAM2ImagePredictor that encodes a batch of images in one pass and then serves
    them one by one to code written for single images (the automatic mask generator)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class BatchedPredictor(SAM2ImagePredictor):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            s = model.image_size
            # The parent hard-codes the backbone feature sizes of a 1024 input; a model
            # built for another size (the tiny test model) has these.
            self._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
            self._batch = None
            self._current = 0

        def encode_batch(self, images) -> list[int]:
            """Encode every image at once; the indices of those whose features are not finite."""
            import torch

            self.set_image_batch(list(images))
            feats = self._features
            self._batch = (feats, list(self._orig_hw))
            bad = []
            for i in range(len(images)):
                parts = [feats["image_embed"][i]] + [f[i] for f in feats["high_res_feats"]]
                if not all(bool(torch.isfinite(p).all()) for p in parts):
                    bad.append(i)
            return bad

        def select(self, i: int) -> None:
            """Point the single-image state at image i of the encoded batch."""
            feats, sizes = self._batch
            self._current = i
            self._features = {"image_embed": feats["image_embed"][i:i + 1],
                              "high_res_feats": [f[i:i + 1] for f in feats["high_res_feats"]]}
            self._orig_hw = [sizes[i]]
            self._is_image_set, self._is_batch = True, False

        def set_image(self, image) -> None:
            # The generator asks to encode the image it works on: it was, with its batch.
            # A crop (crop_n_layers > 0) has another size and is encoded on its own.
            if self._batch is not None and tuple(image.shape[:2]) == tuple(
                    self._batch[1][self._current]):
                self.select(self._current)
            else:
                super().set_image(image)

        def release(self) -> None:
            self._batch = None
            self.reset_predictor()

    return BatchedPredictor(net, **kwargs)
