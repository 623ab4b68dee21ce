"""One place that makes every conv, BatchNorm, linear and activation of a model.

Architectures ask the builder for layers by role (a 3x3 conv, the classifier, ...) and the
builder decides their type (split or plain), their split arguments and their initialisation
(--init for every conv and linear weight, as the reference's builder). DenseNet, GoogLeNet and
VGG then re-draw some weights by their own rule after building; their docstrings say which.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from layers.bn_type import BN_LAYERS, SplitBatchNorm
from layers.conv_type import CONV_LAYERS, SplitConv
from layers.linear_type import LINEAR_LAYERS, SplitLinear
from layers.registry import check_names
from models.names import BN_TYPES, CONV_TYPES, INITS, LINEAR_TYPES

check_names(CONV_LAYERS, CONV_TYPES, "--conv_type")
check_names(BN_LAYERS, BN_TYPES, "--bn_type")
check_names(LINEAR_LAYERS, LINEAR_TYPES, "--linear_type")


class Builder:
    def __init__(self, conv_type: str = "SplitConv", bn_type: str = "SplitBatchNorm",
                 linear_type: str = "SplitLinear", split_rate: float = 1.0,
                 split_mode: str = "kels", bias_split_rate: float | None = None,
                 init: str = "kaiming_normal", mode: str = "fan_in", nonlinearity: str = "relu",
                 scale_fan: bool = False):
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        self.conv_type = CONV_LAYERS[conv_type]
        self.bn_type = BN_LAYERS[bn_type]
        self.linear_type = LINEAR_LAYERS[linear_type]
        self.split = dict(split_rate=split_rate, split_mode=split_mode,
                          bias_split_rate=bias_split_rate)
        self.split_rate = split_rate
        self.init, self.mode, self.nonlinearity, self.scale_fan = init, mode, nonlinearity, scale_fan

    def conv(self, kernel_size: int, in_planes: int, out_planes: int, stride: int = 1,
             in_chunks: Sequence[int] | None = None, image_input: bool = False,
             bias: bool = False) -> nn.Conv2d:
        args = (in_planes, out_planes, kernel_size, stride, kernel_size // 2)
        if issubclass(self.conv_type, SplitConv):
            conv = self.conv_type(*args, bias=bias, in_chunks=in_chunks, image_input=image_input,
                                  **self.split)
        else:
            conv = self.conv_type(*args, bias=bias)
        self.initialise(conv)
        return conv

    def conv1x1(self, in_planes, out_planes, stride=1, **kwargs):
        return self.conv(1, in_planes, out_planes, stride, **kwargs)

    def conv3x3(self, in_planes, out_planes, stride=1, **kwargs):
        return self.conv(3, in_planes, out_planes, stride, **kwargs)

    def conv7x7(self, in_planes, out_planes, stride=1, **kwargs):
        return self.conv(7, in_planes, out_planes, stride, **kwargs)

    def batchnorm(self, planes: int, in_chunks: Sequence[int] | None = None) -> nn.BatchNorm2d:
        if issubclass(self.bn_type, SplitBatchNorm):
            return self.bn_type(planes, split_rate=self.split_rate, in_chunks=in_chunks)
        return self.bn_type(planes)

    def linear(self, in_features: int, out_features: int, last_layer: bool = True,
               in_chunks: Sequence[int] | None = None, features_per_channel: int = 1,
               bias: bool = True) -> nn.Linear:
        """A linear layer; `last_layer` marks the classifier (all rows fit). Weight by --init."""
        if issubclass(self.linear_type, SplitLinear):
            linear = self.linear_type(in_features, out_features, bias, last_layer=last_layer,
                                      in_chunks=in_chunks,
                                      features_per_channel=features_per_channel, **self.split)
        else:
            linear = self.linear_type(in_features, out_features, bias)
        self.initialise(linear)
        return linear

    def activation(self) -> nn.Module:
        return nn.ReLU(inplace=True)

    @torch.no_grad()
    def initialise(self, layer: nn.Module):
        """Draw the weight of `layer` (a conv or a linear) by --init (--mode, --nonlinearity,
        --scale-fan); its bias keeps PyTorch's default. The constant inits keep the sign of the
        weight PyTorch drew when it built the layer."""
        weight = layer.weight
        if self.init == "standard":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        elif self.init == "kaiming_uniform":
            nn.init.kaiming_uniform_(weight, mode=self.mode, nonlinearity=self.nonlinearity)
        elif self.init == "xavier_normal":
            nn.init.xavier_normal_(weight)
        elif self.init == "xavier_constant":
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
            weight.copy_(weight.sign() * math.sqrt(2.0 / (fan_in + fan_out)))
        elif self.init == "kaiming_normal" and not self.scale_fan:
            nn.init.kaiming_normal_(weight, mode=self.mode, nonlinearity=self.nonlinearity)
        else:
            std = self._std(weight)
            if self.init == "kaiming_normal":
                nn.init.normal_(weight, 0.0, std)
            elif self.init == "signed_constant":
                weight.copy_(weight.sign() * std)
            else:  # unsigned_constant
                nn.init.constant_(weight, std)

    def _std(self, weight) -> float:
        """gain / sqrt(fan); with --scale-fan the fan counts only the fit fraction of inputs."""
        fan = nn.init._calculate_correct_fan(weight, self.mode)
        if self.scale_fan:
            fan = fan * self.split_rate
        return nn.init.calculate_gain(self.nonlinearity) / math.sqrt(fan)


def get_builder(cfg, slim: bool = False) -> Builder:
    """The builder for `cfg`. `slim=True` gives the builder of the dense network the slim one is
    cut from: split conv, BatchNorm and linear layers with KELS masks at --split_rate, whatever
    --conv_type, --bn_type, --linear_type and --split_mode say (only the masks matter there)."""
    common = dict(init=cfg.init, mode=cfg.mode, nonlinearity=cfg.nonlinearity,
                  scale_fan=cfg.scale_fan)
    if slim:
        return Builder("SplitConv", "SplitBatchNorm", "SplitLinear", split_rate=cfg.split_rate,
                       split_mode="kels", bias_split_rate=cfg.bias_split_rate, **common)
    return Builder(cfg.conv_type, cfg.bn_type, cfg.linear_type, split_rate=cfg.split_rate,
                   split_mode=cfg.split_mode, bias_split_rate=cfg.bias_split_rate, **common)
