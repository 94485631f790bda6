"""LoRA inputs left in the autocast dtype: peft would cast each one to the LoRA's float32.

The LoRA weights stay float32 (the optimizer's master copy) while the base runs in bf16.
peft casts every LoRA layer's input to its weight dtype before ``lora_A``; under autocast the
matmul casts it straight back to bf16, so the cast only adds a float32 copy of each input
(the issue's estimate for FLUX.1-Fill at 6912 tokens: +1.3 GiB at the peak, and the traffic
of 504 extra copies per forward). ``autocast_lora_inputs(model)`` turns peft's cast off and
casts only where nothing else will: a call outside autocast whose input dtype differs
from the LoRA's (a bf16 base trained with ``mixed_precision: "no"``).
"""

from __future__ import annotations

import torch


def _cast_without_autocast(module: torch.nn.Linear, args):
    x = args[0]
    if torch.is_autocast_enabled(x.device.type) or x.dtype == module.weight.dtype:
        return None
    return (x.to(module.weight.dtype), *args[1:])


def autocast_lora_inputs(model: torch.nn.Module) -> int:
    """Turn off peft's input cast on every LoRA layer of `model`; returns how many layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = 0
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        module.cast_input_dtype_enabled = False
        for lora_a in getattr(module, "lora_A", {}).values():
            if not getattr(lora_a, "_autocast_input_hook", False):
                lora_a.register_forward_pre_hook(_cast_without_autocast)
                lora_a._autocast_input_hook = True
        layers += 1
    return layers
