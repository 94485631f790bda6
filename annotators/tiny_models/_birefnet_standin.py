"""A tiny segmentation net with BiRefNet's interface, for tests: remote code of a model folder.

RMBG-2.0 ships BiRefNet as remote code (`birefnet.py` beside `config.json`, named in its
`auto_map`); `model(pixel_values)` returns a list of matte logits, coarse to fine, the last
at the input size. This file is copied into the tiny `rmbg` folder and loaded from there
by `AutoModelForImageSegmentation.from_pretrained(folder, trust_remote_code=True)`, the
path the real model takes. It imports only torch and transformers.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class BiRefNetStandInConfig(PretrainedConfig):
    model_type = "birefnet_standin"

    def __init__(self, image_size: int = 64, width: int = 8, **kwargs):
        self.image_size = image_size
        self.width = width
        super().__init__(**kwargs)


class BiRefNetStandIn(PreTrainedModel):
    config_class = BiRefNetStandInConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        w = config.width
        self.down1 = nn.Conv2d(3, w, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.coarse = nn.Conv2d(2 * w, 1, 1)
        self.up = nn.Conv2d(2 * w + w, w, 3, padding=1)
        self.fine = nn.Conv2d(w, 1, 1)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values):
        x1 = F.relu(self.down1(pixel_values))
        x2 = F.relu(self.down2(x1))
        coarse = self.coarse(x2)
        up = F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self.up(torch.cat([up, x1], dim=1)))
        fine = F.interpolate(self.fine(x), size=pixel_values.shape[-2:], mode="bilinear",
                             align_corners=False)
        return [F.interpolate(coarse, size=pixel_values.shape[-2:], mode="bilinear",
                              align_corners=False), fine]
