"""GoogLeNet (Inception v1 with BatchNorm, torchvision layout, no auxiliary heads).

Parameter names follow torchvision (`conv1.conv`, `conv1.bn`, `inception3a.branch2.1.conv`,
`fc`). As in torchvision, the "5x5" branch uses a 3x3 conv and every BatchNorm has eps 1e-3.

An Inception module's output is the concatenation of its four branches, so the next module's
1x1 convs (and the classifier) are told those four chunk sizes; under KELS they keep the first
ceil(s*c) input channels of every branch c. Max-pooling keeps channels apart, so it passes the
chunks through unchanged.

The slim network is cut from this dense one by its masks (`models.evolution.slim_network`): its
concatenations are made of exactly the dense network's fit chunks.

Initialisation, as the reference (which copied torchvision's GoogLeNet of its day): once built,
every conv and linear weight is re-drawn from a normal of std 0.01 truncated at 2 std (+-0.02),
whatever --init says, so its std is 0.0088; biases and BatchNorm keep PyTorch's defaults.
(Today's torchvision truncates at +-2 in absolute terms, which cuts nothing: std 0.01.)
"""
from collections.abc import Sequence

import torch
import torch.nn as nn

from models.builder import Builder
from models.hand_written import hand_written

BN_EPS = 1e-3
INIT_STD = 0.01  # of the normal before truncation at +-2 * INIT_STD


class BasicConv2d(nn.Module):
    """conv (no bias) - BatchNorm - ReLU."""

    def __init__(self, builder: Builder, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, in_chunks: Sequence[int] | None = None,
                 image_input: bool = False):
        super().__init__()
        self.conv = builder.conv(kernel_size, in_channels, out_channels, stride,
                                 in_chunks=in_chunks, image_input=image_input)
        self.bn = builder.batchnorm(out_channels)
        self.bn.eps = BN_EPS
        self.relu = builder.activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (torchvision's "5x5"); max-pool -> 1x1.

    `in_chunks` are the sizes of the tensors concatenated to form the input.
    """

    def __init__(self, builder: Builder, in_chunks: Sequence[int], ch1x1: int, ch3x3red: int,
                 ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int):
        super().__init__()
        in_chunks = list(in_chunks)
        width = sum(in_chunks)
        self.branch1 = BasicConv2d(builder, width, ch1x1, 1, in_chunks=in_chunks)
        self.branch2 = nn.Sequential(
            BasicConv2d(builder, width, ch3x3red, 1, in_chunks=in_chunks),
            BasicConv2d(builder, ch3x3red, ch3x3, 3),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(builder, width, ch5x5red, 1, in_chunks=in_chunks),
            BasicConv2d(builder, ch5x5red, ch5x5, 3),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(builder, width, pool_proj, 1, in_chunks=in_chunks),
        )
        self.out_chunks: list[int] = [ch1x1, ch3x3, ch5x5, pool_proj]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))
        return torch.cat(branches, 1)


# (name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj); "pool" entries are max-pools.
_LAYOUT = (
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("maxpool3", 3),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("maxpool4", 2),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
)


class GoogLeNet(nn.Module):
    def __init__(self, builder: Builder, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.conv1 = BasicConv2d(builder, 3, 64, 7, stride=2, image_input=True)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(builder, 64, 64, 1)
        self.conv3 = BasicConv2d(builder, 64, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        chunks: list[int] = [192]
        for name, *sizes in _LAYOUT:
            if name.startswith("maxpool"):
                module = nn.MaxPool2d(sizes[0], stride=2, ceil_mode=True)
            else:
                module = Inception(builder, chunks, *sizes)
                chunks = module.out_chunks
            self.add_module(name, module)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = builder.linear(sum(chunks), num_classes, last_layer=True, in_chunks=chunks)
        self._initialise()

    @torch.no_grad()
    def _initialise(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        for name, *_ in _LAYOUT:
            x = getattr(self, name)(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


@hand_written
def Split_googlenet(builder, num_classes):
    return GoogLeNet(builder, num_classes)
