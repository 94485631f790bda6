"""The one place train.evaluate touches the trainers and inference CLIs (re-point it here when
they move): config loading, and one generator per recipe that turns an item's `Inputs` into
the generated image with a given seed.

- `FillGenerator`: FLUX.1-Fill + a train.fill LoRA; composes the item's grid in inference
  sizing and solves it with train.infer_fill.solve (the cell it returns is the image).
- `CogVideoXGenerator`: the base model + one train.cogvideox adapter; its column label is the
  adapter's FCD mask variant (realgeneral_config.json); train.infer_cogvideox.generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from train.common.config import ConfigError, load_config, to_dict  # noqa: F401  (re-exported)


def _device_dtype(device: str, dtype: str):
    from annotators.models import resolve_device, resolve_dtype

    dev = resolve_device("evaluate", device)
    return dev, resolve_dtype("evaluate", dtype, dev)


class FillGenerator:
    def __init__(self, pretrained: str, lora: str | None, device: str = "auto", dtype: str = "auto",
                 steps: int = 28, guidance: float | None = None, res: int = 384, max_sequence_length: int = 512,
                 revision: str | None = None):
        from train.visualcloze.infer import GridFillPipeline
        from train.visualcloze.inputs import vae_scale_factor

        self.device, self.dtype = _device_dtype(device, dtype)
        self.pipe = GridFillPipeline.from_pretrained(pretrained, revision=revision, dtype=self.dtype).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        if lora:
            if not Path(lora).exists():
                raise FileNotFoundError(f"model.loras: {lora} does not exist (the …/lora folder train.fill writes)")
            self.pipe.load_lora_weights(lora)
        self.steps, self.res, self.msl = steps, res, max_sequence_length
        self.guidance = 30.0 if guidance is None else guidance  # train.infer_fill's default
        self.multiple = 2 * vae_scale_factor(self.pipe.vae)
        self.label = None  # Fill columns are the items' in-context counts

    def __call__(self, inputs, seed: int) -> np.ndarray:
        from graph200k.grid import INFER, compose_images
        from train.visualcloze.infer import solve

        grid = compose_images(inputs.rows, inputs.mask[0], inputs.mask[1], inputs.grid_prompt, self.res, INFER,
                              self.multiple)
        _, target = solve(self.pipe, grid, self.steps, self.guidance, seed, self.msl)
        return target


def adapter_config(lora: str) -> dict:
    """A train.cogvideox adapter's config: its FCD `mask_variant` and UCE `tasks`."""
    from train.realgeneral.model import ADAPTER_CONFIG

    path = Path(lora) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"model.loras: {path} missing; each entry must be an adapter folder written by "
                                "train.cogvideox (<out_dir>/lora)")
    return json.loads(path.read_text())


def adapter_mask_variant(lora: str) -> str:
    return adapter_config(lora)["mask_variant"]


class CogVideoXGenerator:
    def __init__(self, pretrained: str, lora: str, device: str = "auto", dtype: str = "auto", steps: int = 50,
                 guidance: float | None = None, scheduler: str = "dpm", revision: str | None = None):
        from train.realgeneral.encoders import load_components
        from train.realgeneral.model import RealGeneralModel

        self.label = adapter_mask_variant(lora)
        self.device, self.dtype = _device_dtype(device, dtype)
        self.parts = load_components(pretrained, dtype=self.dtype, device=self.device, scheduler=scheduler,
                                     revision=revision)
        self.model = RealGeneralModel.from_adapter(self.parts.pop("transformer"), lora).eval()
        self.steps, self.guidance = steps, guidance

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.uce.tasks)

    def __call__(self, inputs, seed: int) -> np.ndarray:
        from train.realgeneral.infer import generate

        if inputs.pair_task not in self.model.uce.tasks:
            raise ValueError(f"task {inputs.pair_task!r} is not among the adapter's UCE tasks "
                             f"({', '.join(self.model.uce.tasks)}); it was not trained on it")
        return generate(self.parts, self.model, inputs.condition, inputs.pair_prompt, inputs.subject,
                        inputs.pair_task, steps=self.steps, guidance=self.guidance, seed=seed)
