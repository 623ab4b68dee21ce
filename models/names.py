"""Architecture names for `--arch`, importable without torch (the command-line parser lists them
without paying for a torch import; `models/__init__.py` checks they match the implementations)."""

HAND_WRITTEN = (
    "Split_ResNet18", "Split_ResNet34", "Split_ResNet50", "Split_ResNet101",
    "Split_densenet121", "Split_densenet161", "Split_densenet169", "Split_densenet201",
    "Split_googlenet", "Split_vgg11_bn", "Split_vgg16_bn",
)

# torchvision CNNs whose split is derived from their torch.fx graph (models/graph_split.py);
# torchvision's names that a hand-written architecture above already covers are left out.
GRAPH_DERIVED = tuple(f"Split_{name}" for name in (
    "alexnet", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s",
    "efficientnet_v2_m", "efficientnet_v2_l", "inception_v3", "mnasnet0_5", "mnasnet0_75",
    "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf",
    "regnet_x_16gf", "regnet_x_32gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf",
    "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "vgg11",
    "vgg13", "vgg13_bn", "vgg16", "vgg19", "vgg19_bn", "wide_resnet50_2", "wide_resnet101_2",
))

# Layer types and weight initialisations the builder (models/builder.py) implements.
CONV_TYPES = ("SplitConv", "DenseConv")
BN_TYPES = ("SplitBatchNorm", "NormalBatchNorm", "NonAffineBatchNorm")
LINEAR_TYPES = ("SplitLinear", "DenseLinear")
INITS = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "standard", "signed_constant",
         "unsigned_constant", "xavier_constant")
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")   # init gains
