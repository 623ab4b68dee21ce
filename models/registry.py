"""Architecture registry: `ARCHITECTURES[name](builder, num_classes, slim_factor)`.

The hand-written architectures come first, then the torchvision CNNs split from their graph."""
from models.split_densenet import (Split_densenet121, Split_densenet161, Split_densenet169,
                                   Split_densenet201)
from models.split_googlenet import Split_googlenet
from models.split_resnet import Split_ResNet18, Split_ResNet34, Split_ResNet50, Split_ResNet101
from models.graph_split import architecture
from models.names import GRAPH_DERIVED, HAND_WRITTEN
from models.split_vgg import Split_vgg11_bn, Split_vgg16_bn

ARCHITECTURES = {
    "Split_ResNet18": Split_ResNet18,
    "Split_ResNet34": Split_ResNet34,
    "Split_ResNet50": Split_ResNet50,
    "Split_ResNet101": Split_ResNet101,
    "Split_densenet121": Split_densenet121,
    "Split_densenet161": Split_densenet161,
    "Split_densenet169": Split_densenet169,
    "Split_densenet201": Split_densenet201,
    "Split_googlenet": Split_googlenet,
    "Split_vgg11_bn": Split_vgg11_bn,
    "Split_vgg16_bn": Split_vgg16_bn,
}

assert tuple(ARCHITECTURES) == HAND_WRITTEN, "models/names.py must list ARCHITECTURES in order"
ARCHITECTURES.update({arch: architecture(arch) for arch in GRAPH_DERIVED})
