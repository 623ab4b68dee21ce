"""The zero-shot split of metric learning (--task retrieval).

The first half of the classes, in the dataset's class order (`DataSplits.classes`: CUB-200's
class ids 1..100, Stanford Cars' 1..98), trains; the second half is only searched. As in the
standard protocol (Oh Song et al., CVPR 2016) and the Proxy-Anchor code, each half takes every
image of its classes, whichever official split (train / val / test) it came from: the test
classes never appear in training, so the official image split has no role. There is no
validation split: every evaluation (each test interval, the dense and the slim rows) runs on the
test classes, as the recipe does.
"""
import copy
import logging
from collections.abc import Sequence
from dataclasses import replace

from torch.utils.data import Dataset

from data import DataError
from data.lists import DataSplits

log = logging.getLogger(__name__)

MIN_CLASSES = 4     # two classes on each side: recall needs a wrong class to confuse


def class_halves(num_classes: int) -> tuple[range, range]:
    """(training class indices, test class indices): the first floor(C/2), then the rest."""
    half = num_classes // 2
    return range(half), range(half, num_classes)


class ClassSubset(Dataset):
    """The images of some classes taken from several datasets, relabelled 0..K-1 in class order.

    Its `transform` (the training or the evaluation one) replaces those of the source datasets,
    which are read without theirs; `targets` are the new labels.
    """

    def __init__(self, sources: Sequence[Dataset], classes: range, transform):
        self.items: list[tuple[Dataset, int]] = []
        self.targets: list[int] = []
        for source in sources:
            raw = copy.copy(source)
            raw.transform = None
            for index, target in enumerate(source.targets):
                if int(target) in classes:
                    self.items.append((raw, index))
                    self.targets.append(int(target) - classes.start)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        source, inner = self.items[index]
        image, _ = source[inner]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def zero_shot_splits(splits: DataSplits, set_name: str) -> DataSplits:
    """`splits` cut by class: train = every image of the first half of the classes (training
    transform), val = test = every image of the second half (evaluation transform)."""
    classes = splits.classes
    if len(classes) < MIN_CLASSES:
        raise DataError(f"--task retrieval needs at least {MIN_CLASSES} classes (half train, half "
                        f"are searched) and --set {set_name} has {len(classes)}; use a dataset "
                        f"with more classes or --task classification")
    sources = []
    for dataset in (splits.train, splits.val, splits.test):
        if dataset is not None and all(dataset is not s for s in sources):
            if not hasattr(dataset, "targets") or not hasattr(dataset, "transform"):
                raise DataError(f"--task retrieval cannot split {type(dataset).__name__} by "
                                f"class (it has no targets/transform); use a lists or folder "
                                f"dataset")
            sources.append(dataset)
    train_classes, test_classes = class_halves(len(classes))
    eval_transform = (splits.test or splits.val).transform
    train = ClassSubset(sources, train_classes, splits.train.transform)
    test = ClassSubset(sources, test_classes, eval_transform)
    log.info("--task retrieval: %d training classes (%s ... %s, %d images), %d test classes "
             "(%s ... %s, %d images); no validation split: every evaluation searches the test "
             "classes", len(train_classes), classes[0], classes[train_classes.stop - 1],
             len(train), len(test_classes), classes[test_classes.start], classes[-1], len(test))
    return replace(splits, train=train, val=test, test=test, val_is_test=True,
                   classes=list(classes[:train_classes.stop]))

