"""Regularisation of the training input: per-image augmentation (--augment, --random_erasing)
and batch mixing (--mixup, --cutmix), all torchvision.transforms.v2.

Per image, after the random resized crop and flip, on the uint8 pixels (`ImageAugment`): the
automatic augmentation policy (v2.TrivialAugmentWide, v2.RandAugment or v2.AutoAugment with
the ImageNet policy, each with torchvision's defaults), then v2.RandomErasing filled with the
ImageNet mean colour (124, 116, 104): after normalisation within 0.006 of 0, the value
torchvision's recipe erases normalised images with. The steps draw from torch's global generator
inside the item's draws, so they come from the item's own seed (data.samplers.SeededSamples) like
its crop: the same images with any number of workers, and after a resume.

- On the decoded cache (data.cache.CachedImages) they run on each cached crop in the loader's
  workers. Such items are made one by one (not built into one batch buffer), and their crops
  cannot wait for the device: `--batched_crops auto` then crops per image (logged).
- On the per-sample path they run inside the v2 transform, between ToImage and ToDtype.

Batch mixing (`BatchMix`, `MixedForward`) runs on the training device, on the normalised batch:
v2.MixUp or v2.CutMix (v2.RandomChoice of the two, each with probability 1/2, when both are on)
turn the labels into class probabilities, which nn.CrossEntropyLoss takes (label smoothing
included). The training top-1 counts the unmixed labels.

Torch is imported when an augmentation is built, not with this module (configs read its names).
"""
import copy
import dataclasses
from collections.abc import Callable
from typing import Optional

AUGMENTS = ("none", "trivialaugment", "randaugment", "autoaugment")
ERASE_FILL = (124, 116, 104)         # round(255 x ImageNet mean), the colour normalised to ~0


def _policy(name: str, v2):
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment()
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    raise ValueError(f"unknown augmentation {name!r}; one of {', '.join(AUGMENTS)}")


class ImageAugment:
    """The per-image steps of --augment and --random_erasing on a uint8 3 x H x W image (a
    tensor or a tv_tensors.Image); the v2 steps are built on the first call (and anew in each
    loader worker)."""

    def __init__(self, augment: str = "none", erasing: float = 0.0):
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augmentation {augment!r}; one of {', '.join(AUGMENTS)}")
        self.augment, self.erasing = augment, float(erasing)
        self._compose = None

    @classmethod
    def of(cls, cfg) -> Optional["ImageAugment"]:
        """The steps `cfg` asks for, or None when it asks for none."""
        augment, erasing = getattr(cfg, "augment", "none"), getattr(cfg, "random_erasing", 0.0)
        return cls(augment, erasing) if augment != "none" or erasing > 0 else None

    def steps(self, v2) -> list:
        steps = [] if self.augment == "none" else [_policy(self.augment, v2)]
        if self.erasing > 0:
            steps.append(v2.RandomErasing(p=self.erasing, value=list(ERASE_FILL)))
        return steps

    def __call__(self, image):
        if self._compose is None:
            from torchvision.transforms import v2
            self._compose = v2.Compose(self.steps(v2))
        return self._compose(image)

    def __getstate__(self):
        return {"augment": self.augment, "erasing": self.erasing, "_compose": None}

    def __repr__(self):
        return f"ImageAugment({self.augment!r}, erasing={self.erasing:g})"


def with_steps(compose, augment: ImageAugment):
    """A copy of the v2.Compose `compose` with `augment`'s steps before its first ToDtype (where
    the image is a uint8 tensor); ValueError when it has none."""
    from torchvision.transforms import v2
    steps = list(compose.transforms)
    at = next((k for k, step in enumerate(steps) if isinstance(step, v2.ToDtype)), None)
    if at is None:
        raise ValueError(f"the training transform {compose!r} has no ToDtype step to augment before")
    return v2.Compose(steps[:at] + augment.steps(v2) + steps[at:])


def augmented(dataset, augment: ImageAugment):
    """A shallow copy of the training `dataset` whose items take `augment`'s steps (the
    original is unchanged: a validation split drawn from it stays clean)."""
    from data.cache import CachedImages, replace_fields
    from data.transforms import TrainTransform
    if isinstance(dataset, CachedImages):
        if dataset.transform is None:
            return replace_fields(dataset, augment=augment)
        return replace_fields(dataset, transform=with_steps(dataset.transform, augment))
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, TrainTransform):
        other = copy.copy(dataset)
        other.transform = transform.with_augment(augment)
        return other
    if transform is not None:
        other = copy.copy(dataset)
        other.transform = with_steps(transform, augment)
        return other
    inner = getattr(dataset, "dataset", None)
    if inner is not None:                  # a wrapper (a subset): augment what it wraps
        other = copy.copy(dataset)
        other.dataset = augmented(inner, augment)
        return other
    raise ValueError(f"{dataset!r} has no transform to add --augment/--random_erasing to")


def augment_training(splits, cfg):
    """`splits` with the training split augmented as `cfg` asks (itself when it asks nothing)."""
    augment = ImageAugment.of(cfg)
    if augment is None:
        return splits
    return dataclasses.replace(splits, train=augmented(splits.train, augment))


class BatchMix:
    """(images, labels) -> (mixed images, label probabilities): v2.MixUp, v2.CutMix, or a
    v2.RandomChoice of the two."""

    def __init__(self, mixup: float | None, cutmix: float | None, num_classes: int):
        from torchvision.transforms import v2
        mixes = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []) + \
                ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else [])
        if not mixes:
            raise ValueError("BatchMix needs a mixup or a cutmix alpha")
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    @classmethod
    def of(cls, cfg, num_classes: int) -> Optional["BatchMix"]:
        mixup, cutmix = getattr(cfg, "mixup", None), getattr(cfg, "cutmix", None)
        return cls(mixup, cutmix, num_classes) if mixup or cutmix else None

    def __call__(self, images, labels):
        return self.mix(images, labels)


class MixedForward:
    """A `forward` for trainers.engine.train_one_epoch: the batch mixed by `mix`, then `inner`
    (another such forward, or the plain loss) on the mixed images and label probabilities; the
    unmixed labels go back for the training top-1."""

    def __init__(self, mix: BatchMix, inner: Callable | None = None):
        self.mix, self.inner = mix, inner

    def __call__(self, model, images, target, criterion):
        images, probabilities = self.mix(images, target)
        if self.inner is None:
            logits = model(images)
            loss = criterion(logits, probabilities)
        else:
            loss, logits, _ = self.inner(model, images, probabilities, criterion)
        return loss, logits, target
