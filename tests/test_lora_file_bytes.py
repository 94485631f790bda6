"""A saved LoRA's bytes depend on its content only.

safetensors writes its `__metadata__` map in hash order (a Rust HashMap), so diffusers'
two metadata keys (`format`, `lora_adapter_metadata`) came out in either order, and a
resumed run's LoRA differed from an uninterrupted run's by the header alone.
"""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train.common.checkpoint import sort_safetensors_metadata

META = {"format": "pt", "lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8})}


def _with_metadata_order(path, keys):
    """Rewrite a safetensors header so its metadata keys come in `keys` order."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    text = json.dumps({"__metadata__": {k: meta[k] for k in keys}, **header},
                      separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def test_metadata_in_either_order_gives_the_same_bytes_and_the_same_tensors(tmp_path):
    tensors = {"transformer.a.lora_A.weight": torch.arange(12.0).reshape(3, 4),
               "transformer.a.lora_B.weight": torch.ones(4, 3, dtype=torch.bfloat16)}
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    for path, keys in ((first, ["format", "lora_adapter_metadata"]),
                       (second, ["lora_adapter_metadata", "format"])):
        save_file(tensors, str(path), metadata=META)
        _with_metadata_order(path, keys)
    assert first.read_bytes() != second.read_bytes()  # what safetensors may write

    for path in (first, second):
        sort_safetensors_metadata(path)
    assert first.read_bytes() == second.read_bytes()
    with safe_open(str(first), "pt") as f:
        assert f.metadata() == META
        for name, value in tensors.items():
            assert torch.equal(f.get_tensor(name), value)
