"""Architecture names for `--arch`, importable without torch (the command-line parser lists them
without paying for a torch import; `models/__init__.py` checks they match the implementations)."""

HAND_WRITTEN = (
    "Split_ResNet18", "Split_ResNet34", "Split_ResNet50", "Split_ResNet101",
    "Split_densenet121", "Split_densenet161", "Split_densenet169", "Split_densenet201",
    "Split_googlenet", "Split_vgg11_bn", "Split_vgg16_bn",
)

# Layer types and weight initialisations the builder (models/builder.py) implements.
CONV_TYPES = ("SplitConv", "DenseConv")
BN_TYPES = ("SplitBatchNorm", "NormalBatchNorm", "NonAffineBatchNorm")
LINEAR_TYPES = ("SplitLinear", "DenseLinear")
INITS = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "standard", "signed_constant",
         "unsigned_constant", "xavier_constant")
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")   # init gains
