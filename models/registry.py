"""Architecture registry: `ARCHITECTURES[name](builder, num_classes)` builds the dense model
(its slim network is cut from it: `models.factory.get_model(cfg, slim=True)`).

The hand-written architectures (registered where they are defined, in the order of
names.HAND_WRITTEN) come first, then the torchvision CNNs split from their graph."""
import models.split_densenet  # noqa: F401 (each import registers its architectures)
import models.split_googlenet  # noqa: F401 (registers its architectures)
import models.split_resnet  # noqa: F401 (registers its architectures)
import models.split_vgg  # noqa: F401 (registers its architectures)
from layers.registry import check_names
from models.graph_split import architecture
from models.hand_written import HAND_WRITTEN_ARCHS
from models.names import GRAPH_DERIVED, HAND_WRITTEN

check_names(HAND_WRITTEN_ARCHS, HAND_WRITTEN, "--arch (hand-written)")
ARCHITECTURES = {arch: HAND_WRITTEN_ARCHS[arch] for arch in HAND_WRITTEN}
ARCHITECTURES.update({arch: architecture(arch) for arch in GRAPH_DERIVED})
