"""Which channels of every tensor of a torchvision CNN are fit, worked out from its torch.fx graph.

Every conv / linear output opens a channel space (`models.channel_spaces`); a tensor's channels are
a concatenation of spaces (`cat` concatenates them). Channel-wise ops (BatchNorm, activations,
pooling, dropout) pass a tensor's spaces through and a depthwise conv's outputs are its inputs'
spaces. `add` and channel-wise `mul` unify the spaces of their operands (one fit set on both sides);
a grouped conv asks its input space for a per-group prefix and gives its output one. Once the whole
graph is read, a space of width C is fit on its first ceil(s*c) channels of every chunk c (one chunk
unless a grouped conv asked for groups), and entirely fit where the model's output reads it.

Ops that mix channels (LayerNorm over channels, a reshape across channels, a per-channel
parameter) still get masks, but leave the model without an exact slim network; `slim_blockers`
says why. An op the analysis does not know stops with a GraphSplitError that names it.
"""
import os
import traceback
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from errors import one_line
from models.channel_spaces import GraphSplitError, Layout, Space, ask_groups, unify_layouts

CHANNEL_WISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)
CHANNEL_WISE_CALLS = {
    "relu", "relu_", "relu6", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid", "tanh",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "dropout",
    "stochastic_depth", "contiguous", "clone",
}
ELEMENTWISE = {"add", "iadd", "mul", "imul"}
RESHAPES = {"view", "reshape"}


@dataclass
class LayerChannels:
    """The layouts a conv / linear / BatchNorm reads and writes."""
    kind: str                       # "conv", "linear" or "norm"
    inputs: Layout
    outputs: Layout


@dataclass
class ChannelGraph:
    """The outcome of the analysis: per layer name its layouts, and why no exact slim exists."""
    layers: dict[str, LayerChannels] = field(default_factory=dict)
    slim_blockers: list[str] = field(default_factory=list)


def _shape(node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta.shape if isinstance(meta, TensorMetadata) else None


def _call_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", str(node.target))


class _Reader:
    """Walks the graph once, node by node, giving every tensor node a Layout."""

    def __init__(self, graph_module: fx.GraphModule):
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.values: dict[fx.Node, object] = {}
        self.result = ChannelGraph()

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                for layout in self._layouts(node.args[0]):
                    for space in layout.spaces:
                        space.root().all_fit = True  # the logits: every output is fit
            else:
                self.values[node] = self._read(node)
        return self.result

    # ---------------------------------------------------------------- helpers
    def _layouts(self, arg) -> list[Layout]:
        if isinstance(arg, (tuple, list)):
            return [x for a in arg for x in self._layouts(a)]
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        return [value] if isinstance(value, Layout) else []

    def _layout(self, node: fx.Node, arg) -> Layout:
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, Layout):
            raise GraphSplitError(f"cannot split {self._where(node)}: its input is not a "
                                  "feature map")
        return value

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"layer {node.target!r} ({type(self.modules[node.target]).__name__})"
        return f"op {_call_name(node)!r} ({node.name})"

    def _fresh(self, node: fx.Node, why: str) -> Layout | None:
        """A new opaque space over the channel dimension: channels were mixed or moved."""
        self.result.slim_blockers.append(f"{self._where(node)} {why}")
        shape = _shape(node)
        return Layout((Space(shape[1], opaque=True),)) if shape is not None and len(shape) > 1 \
            else None

    def _record(self, name: str, layer: LayerChannels, node: fx.Node):
        if name in self.result.layers:
            raise GraphSplitError(f"cannot split {self._where(node)}: the model calls it more "
                                  "than once")
        self.result.layers[name] = layer

    # ---------------------------------------------------------------- nodes
    def _read(self, node: fx.Node):
        if node.op == "placeholder":
            return Layout((Space(_shape(node)[1], all_fit=True),))  # the image
        if node.op == "get_attr":
            return node  # a parameter or buffer, read by an elementwise op
        if node.op == "call_module":
            return self._module(node, self.modules[node.target])
        if _shape(node) is None and not isinstance(node.meta.get("tensor_meta"), (tuple, list)):
            return None  # sizes, shapes, flags: not feature maps
        name = _call_name(node)
        if name in CHANNEL_WISE_CALLS:
            return self._layout(node, node.args[0])
        if name in ELEMENTWISE:
            return self._elementwise(node)
        if name == "cat":
            return self._cat(node)
        if name in ("flatten", *RESHAPES):
            return self._reshape(node)
        if name in ("permute", "transpose"):
            return self._move(node)
        if name == "mean":
            return self._mean(node)
        if name == "layer_norm":
            return self._layer_norm(node, len(node.args[1]))
        if name in ("chunk", "split"):
            return self._chunk(node)
        if name == "getitem" and isinstance(self.values.get(node.args[0]), tuple):
            return self.values[node.args[0]][node.args[1]]  # one piece of a chunk / split
        raise GraphSplitError(f"cannot derive a split from the graph: {self._where(node)} is not "
                              "supported")

    def _module(self, node: fx.Node, module: nn.Module):
        if isinstance(module, nn.Conv2d):
            return self._conv(node, module)
        if isinstance(module, nn.Linear):
            inputs = self._layout(node, node.args[0])
            if inputs.dim != len(_shape(node)) - 1:
                raise GraphSplitError(f"cannot split {self._where(node)}: it reads a tensor whose "
                                      "channels are not its last dimension")
            outputs = Layout((Space(module.out_features),), dim=inputs.dim)
            self._record(node.target, LayerChannels("linear", inputs, outputs), node)
            return outputs
        if isinstance(module, nn.BatchNorm2d):
            layout = self._layout(node, node.args[0])
            self._record(node.target, LayerChannels("norm", layout, layout), node)
            return layout
        if isinstance(module, nn.LayerNorm):
            return self._layer_norm(node, len(module.normalized_shape))
        if isinstance(module, nn.Flatten):
            return self._reshape(node)
        if isinstance(module, CHANNEL_WISE_MODULES):
            return self._layout(node, node.args[0])
        raise GraphSplitError(f"cannot derive a split from the graph: {self._where(node)} is not "
                              "supported")

    def _conv(self, node: fx.Node, conv: nn.Conv2d):
        inputs = self._layout(node, node.args[0])
        if inputs.dim != 1 or inputs.per_channel != 1:
            raise GraphSplitError(f"cannot split {self._where(node)}: its input is not a "
                                  "C x H x W map")
        groups = conv.groups
        if groups == 1:
            outputs = Layout((Space(conv.out_channels),))
        elif groups == conv.in_channels == conv.out_channels:
            outputs = inputs  # depthwise: output channel c reads input channel c only
        elif groups == conv.in_channels:
            raise GraphSplitError(f"cannot split {self._where(node)}: a depthwise conv with a "
                                  "channel multiplier is not supported")
        else:
            ask_groups(inputs, groups, self._where(node))
            per_group = conv.out_channels // groups
            outputs = Layout((Space(conv.out_channels, chunks=[per_group] * groups),))
        self._record(node.target, LayerChannels("conv", inputs, outputs), node)
        return outputs

    def _elementwise(self, node: fx.Node):
        out_shape = _shape(node)
        layouts = []
        for arg in node.args[:2]:
            value = self.values.get(arg) if isinstance(arg, fx.Node) else None
            if isinstance(value, fx.Node) and value.op == "get_attr":
                if _shape(value) is not None and _shape(value).numel() > 1:
                    self.result.slim_blockers.append(
                        f"parameter {value.target!r} scales each channel ({self._where(node)})")
                continue
            if isinstance(value, Layout):
                shape = _shape(arg)
                if shape is not None and len(shape) > value.dim and shape[value.dim] == 1 \
                        and out_shape[value.dim] != 1:
                    continue  # broadcast over channels (a per-sample scale)
                layouts.append(value)
        if not layouts:
            raise GraphSplitError(f"cannot split {self._where(node)}: it reads no feature map")
        for other in layouts[1:]:
            unify_layouts(layouts[0], other, self._where(node))
        return layouts[0]

    def _cat(self, node: fx.Node):
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        layouts = [self._layout(node, t) for t in tensors]
        rank = len(_shape(node))
        if any(dim % rank != x.dim or x.per_channel != 1 for x in layouts):
            raise GraphSplitError(f"cannot split {self._where(node)}: it concatenates along a "
                                  "dimension other than the channels")
        return Layout(tuple(s for x in layouts for s in x.spaces), dim=layouts[0].dim)

    def _reshape(self, node: fx.Node):
        layout = self._layout(node, node.args[0])
        before, after = _shape(node.args[0]), _shape(node)
        if layout.dim == 1 and len(after) == 2 and after[0] == before[0]:
            spatial = after[1] // before[1]  # flatten(1): C x H x W -> C*H*W features
            return Layout(layout.spaces, 1, layout.per_channel * spatial)
        if tuple(after) == tuple(before):
            return layout
        return self._fresh(node, "reshapes across channels")

    def _move(self, node: fx.Node):
        layout = self._layout(node, node.args[0])
        rank = len(_shape(node))
        if _call_name(node) == "permute":
            dims = node.args[1] if isinstance(node.args[1], (tuple, list)) else node.args[1:]
            dims = [d % rank for d in dims]
            new_dim = dims.index(layout.dim)
        else:
            a, b = (d % rank for d in node.args[1:3])
            new_dim = {a: b, b: a}.get(layout.dim, layout.dim)
        if layout.per_channel != 1:
            return self._fresh(node, "moves flattened channels")
        return Layout(layout.spaces, new_dim)

    def _mean(self, node: fx.Node):
        layout = self._layout(node, node.args[0])
        rank = len(_shape(node.args[0]))
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % rank for d in dims]
        if layout.dim in dims:
            return self._fresh(node, "averages over channels")
        keep = node.kwargs.get("keepdim", len(node.args) > 2 and node.args[2])
        shift = 0 if keep else sum(d < layout.dim for d in dims)
        return Layout(layout.spaces, layout.dim - shift, layout.per_channel)

    def _layer_norm(self, node: fx.Node, normalised_dims: int):
        layout = self._layout(node, node.args[0])
        rank = len(_shape(node))
        if layout.dim >= rank - normalised_dims:
            self.result.slim_blockers.append(
                f"{self._where(node)} normalises over all channels")
        return layout

    def _chunk(self, node: fx.Node):
        layout = self._layout(node, node.args[0])
        pieces = node.meta["tensor_meta"]
        sizes = [p.shape[layout.dim] for p in pieces]
        spaces, out = list(layout.spaces), []
        for size in sizes:
            taken = []
            while size:
                space = spaces.pop(0)
                if space.root().width > size:
                    if not space.root().opaque:
                        raise GraphSplitError(f"cannot split {self._where(node)}: it cuts the "
                                              "output of one layer in two")
                    spaces.insert(0, Space(space.root().width - size, opaque=True))
                    space = Space(size, opaque=True)
                taken.append(space)
                size -= space.root().width
            out.append(Layout(tuple(taken), layout.dim))
        return tuple(out)


def _model_line(error: Exception) -> str:
    """` at file:line `code`` for the last frame of the model's own code in `error`'s traceback."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if f"{os.sep}torch{os.sep}" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {os.path.basename(frame.filename)}:{frame.lineno} `{frame.line}`"


def read_channels(model: nn.Module, image_size: int = 224) -> ChannelGraph:
    """Trace `model` in eval mode (any device, meta included) and work out the channel spaces of
    its layers."""
    model.eval()
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as error:  # the tracer's message and the model's line that raised it
        raise GraphSplitError(f"torch.fx cannot trace this model{_model_line(error)} "
                              f"({one_line(error)})") from error
    device = next(model.parameters()).device
    ShapeProp(graph_module).propagate(torch.empty(1, 3, image_size, image_size, device=device))
    return _Reader(graph_module).run()


def fit_vectors(channels: LayerChannels, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The fit input and output channels (features, for a linear) of one layer at rate `rate`,
    on the CPU whatever the default device (a model built on meta still needs their values)."""
    with torch.device("cpu"):
        return channels.inputs.fit(rate), channels.outputs.fit(rate)

