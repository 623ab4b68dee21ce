"""VGG with BatchNorm (torchvision layout and parameter names) built from split layers.

`features` is the conv stack (3x3 conv with bias - BN - ReLU, max-pools between stages),
followed by a 7x7 adaptive average pool and a three-linear classifier with dropout
(`classifier.0`, `classifier.3`, `classifier.6`).

The first classifier linear reads the flattened C x 7 x 7 map, so its fit columns are exactly
the 49 features of every fit channel (`features_per_channel=49`); it and the second linear are
hidden linears (first ceil(s*out) rows fit); the last one is the classifier.

The slim network is cut from this dense one by its masks (`models.evolution.slim_network`).

Initialisation, as torchvision's VGG (and its split version in Zhou et al.'s later-layer
forgetting code): once built, every conv is re-drawn kaiming-normal (fan_out, relu) with bias 0,
every linear from N(0, 0.01) with bias 0, whatever --init says; BatchNorm starts at 1 / 0.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn

from models.builder import Builder
from models.hand_written import hand_written

POOL_SIZE = 7
HIDDEN = 4096
LINEAR_INIT_STD = 0.01

CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    def __init__(self, builder: Builder, cfg: Sequence[int | str], num_classes: int = 1000,
                 dropout: float = 0.5):
        super().__init__()
        layers = []
        in_width, image_input = 3, True
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [builder.conv3x3(in_width, v, image_input=image_input, bias=True),
                       builder.batchnorm(v), builder.activation()]
            in_width, image_input = v, False
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((POOL_SIZE, POOL_SIZE))
        per_channel = POOL_SIZE * POOL_SIZE
        hidden = HIDDEN
        self.classifier = nn.Sequential(
            builder.linear(in_width * per_channel, hidden, last_layer=False,
                           features_per_channel=per_channel),
            builder.activation(),
            nn.Dropout(p=dropout),
            builder.linear(hidden, hidden, last_layer=False),
            builder.activation(),
            nn.Dropout(p=dropout),
            builder.linear(hidden, num_classes, last_layer=True),
        )
        self._initialise()

    @torch.no_grad()
    def _initialise(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, LINEAR_INIT_STD)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@hand_written
def Split_vgg11_bn(builder, num_classes):
    return VGG(builder, CFGS["vgg11"], num_classes)


@hand_written
def Split_vgg16_bn(builder, num_classes):
    return VGG(builder, CFGS["vgg16"], num_classes)
