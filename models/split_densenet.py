"""DenseNet-BC (bn_size 4, transitions halve the width) built from split layers.

Parameter names follow torchvision (`features.conv0`, `features.denseblock1.denselayer1.conv1`,
`features.transition1.conv`, `features.norm5`, `classifier`).

A dense block's output is the concatenation of its input and of every dense layer's new
features, so each layer that reads it is told the chunk sizes in order: the block input, then
one chunk of `growth_rate` per dense layer. Under KELS the fit input channels are the first
ceil(s*c) of every chunk c.

The slim network is cut from this dense one by its masks (`models.evolution.slim_network`): its
concatenations are made of exactly the dense network's fit chunks, in the same order.

Initialisation, as torchvision's DenseNet and the reference: once built, every conv is re-drawn
kaiming-normal (fan_in, gain sqrt(2)) whatever --init says, and the classifier's bias is zeroed;
the classifier's weight keeps --init (BatchNorm starts at 1 / 0, PyTorch's default).
"""
from collections.abc import Sequence

import torch
import torch.nn as nn

from models.builder import Builder
from models.hand_written import hand_written


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (to bn_size*growth) then BN-ReLU-conv3x3 (to growth)."""

    def __init__(self, builder: Builder, in_chunks: Sequence[int], growth_rate: int,
                 bn_size: int):
        super().__init__()
        in_chunks = list(in_chunks)
        width = bn_size * growth_rate
        self.norm1 = builder.batchnorm(sum(in_chunks), in_chunks=in_chunks)
        self.relu1 = builder.activation()
        self.conv1 = builder.conv1x1(sum(in_chunks), width, in_chunks=in_chunks)
        self.norm2 = builder.batchnorm(width)
        self.relu2 = builder.activation()
        self.conv2 = builder.conv3x3(width, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    """`num_layers` dense layers; returns the concatenation of the input and all new features."""

    def __init__(self, builder: Builder, num_layers: int, in_width: int, growth_rate: int,
                 bn_size: int):
        super().__init__()
        self.out_chunks: list[int] = [in_width]   # the sizes of the concatenated tensors
        for i in range(num_layers):
            layer = DenseLayer(builder, self.out_chunks, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)
            self.out_chunks.append(growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (halving the dense width) then 2x2 average pooling."""

    def __init__(self, builder: Builder, in_chunks: Sequence[int], out_width: int):
        super().__init__()
        in_chunks = list(in_chunks)
        self.add_module("norm", builder.batchnorm(sum(in_chunks), in_chunks=in_chunks))
        self.add_module("relu", builder.activation())
        self.add_module("conv", builder.conv1x1(sum(in_chunks), out_width, in_chunks=in_chunks))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    def __init__(self, builder: Builder, growth_rate: int, block_config: Sequence[int],
                 num_init_features: int, num_classes: int = 1000, bn_size: int = 4):
        super().__init__()
        stem = num_init_features
        self.features = nn.Sequential()
        self.features.add_module("conv0", builder.conv7x7(3, stem, stride=2, image_input=True))
        self.features.add_module("norm0", builder.batchnorm(stem))
        self.features.add_module("relu0", builder.activation())
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

        width = stem
        chunks: list[int] = [stem]
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(builder, num_layers, width, growth_rate, bn_size)
            self.features.add_module(f"denseblock{i + 1}", block)
            chunks = block.out_chunks
            if i != len(block_config) - 1:
                width = sum(chunks) // 2
                self.features.add_module(f"transition{i + 1}",
                                         Transition(builder, chunks, width))
        self.features.add_module("norm5", builder.batchnorm(sum(chunks), in_chunks=chunks))
        self.relu = builder.activation()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = builder.linear(sum(chunks), num_classes, last_layer=True,
                                         in_chunks=chunks)
        self._initialise()

    @torch.no_grad()
    def _initialise(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.features(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@hand_written
def Split_densenet121(builder, num_classes):
    return DenseNet(builder, 32, (6, 12, 24, 16), 64, num_classes)


@hand_written
def Split_densenet161(builder, num_classes):
    return DenseNet(builder, 48, (6, 12, 36, 24), 96, num_classes)


@hand_written
def Split_densenet169(builder, num_classes):
    return DenseNet(builder, 32, (6, 12, 32, 32), 64, num_classes)


@hand_written
def Split_densenet201(builder, num_classes):
    return DenseNet(builder, 32, (6, 12, 48, 32), 64, num_classes)
