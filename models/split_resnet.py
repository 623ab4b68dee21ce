"""ResNets (torchvision layout and parameter names) built from split layers.

The slim network is cut from this dense one by its masks (`models.evolution.slim_network`).
"""
import torch
import torch.nn as nn

from models.builder import Builder
from models.hand_written import hand_written


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, builder: Builder, inplanes: int, planes: int, stride: int = 1,
                 downsample=None):
        super().__init__()
        width, out = planes, planes * self.expansion
        self.conv1 = builder.conv3x3(inplanes, width, stride)
        self.bn1 = builder.batchnorm(width)
        self.relu = builder.activation()
        self.conv2 = builder.conv3x3(width, out)
        self.bn2 = builder.batchnorm(out)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv, as in torchvision."""
    expansion = 4

    def __init__(self, builder: Builder, inplanes: int, planes: int, stride: int = 1,
                 downsample=None):
        super().__init__()
        width, out = planes, planes * self.expansion
        self.conv1 = builder.conv1x1(inplanes, width)
        self.bn1 = builder.batchnorm(width)
        self.conv2 = builder.conv3x3(width, width, stride)
        self.bn2 = builder.batchnorm(width)
        self.conv3 = builder.conv1x1(width, out)
        self.bn3 = builder.batchnorm(out)
        self.relu = builder.activation()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, builder: Builder, block, layers, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = builder.conv7x7(3, 64, stride=2, image_input=True)
        self.bn1 = builder.batchnorm(64)
        self.relu = builder.activation()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(builder, block, 64, layers[0])
        self.layer2 = self._make_layer(builder, block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(builder, block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(builder, block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = builder.linear(512 * block.expansion, num_classes, last_layer=True)

    def _make_layer(self, builder, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            out = planes * block.expansion
            downsample = nn.Sequential(
                builder.conv1x1(self.inplanes, out, stride),
                builder.batchnorm(out),
            )
        layers = [block(builder, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(builder, self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@hand_written
def Split_ResNet18(builder, num_classes):
    return ResNet(builder, BasicBlock, [2, 2, 2, 2], num_classes)


@hand_written
def Split_ResNet34(builder, num_classes):
    return ResNet(builder, BasicBlock, [3, 4, 6, 3], num_classes)


@hand_written
def Split_ResNet50(builder, num_classes):
    return ResNet(builder, Bottleneck, [3, 4, 6, 3], num_classes)


@hand_written
def Split_ResNet101(builder, num_classes):
    return ResNet(builder, Bottleneck, [3, 4, 23, 3], num_classes)
