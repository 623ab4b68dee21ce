"""Architecture registry: `ARCHITECTURES[name](builder, num_classes, slim_factor)`."""
from models.split_resnet import Split_ResNet18, Split_ResNet34, Split_ResNet50, Split_ResNet101

ARCHITECTURES = {
    "Split_ResNet18": Split_ResNet18,
    "Split_ResNet34": Split_ResNet34,
    "Split_ResNet50": Split_ResNet50,
    "Split_ResNet101": Split_ResNet101,
}
