"""Architecture names for `--arch`, importable without torch (the command-line parser lists them
without paying for a torch import; `models/__init__.py` checks they match the implementations)."""

HAND_WRITTEN = (
    "Split_ResNet18", "Split_ResNet34", "Split_ResNet50", "Split_ResNet101",
    "Split_densenet121", "Split_densenet161", "Split_densenet169", "Split_densenet201",
    "Split_googlenet", "Split_vgg11_bn", "Split_vgg16_bn",
)
