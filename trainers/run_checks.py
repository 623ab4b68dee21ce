"""Warnings for a run that is valid but likely wasting the day: said before training (the
training split against the batch and per class) and once after the first epoch (a loss far above
chance). Each names the numbers and what to change."""
import math
from collections import Counter

from errors import short
from utils import counting

# a first epoch whose mean training loss is above this multiple of chance's (ln C, the
# cross-entropy of a uniform prediction) did not start to learn: diverging, or a learning rate
# that throws the weights about
ABOVE_CHANCE = 2.0


def loss_warning(loss: float, num_classes: int, lr: float, generations: int,
                 epochs: int) -> str | None:
    """The warning for a first epoch's mean training `loss`, or None when it is not far above
    chance."""
    chance = math.log(num_classes) if num_classes > 1 else 0.0
    if num_classes < 2 or not math.isfinite(loss) or loss <= ABOVE_CHANCE * chance:
        return None
    return (f"training loss {loss:.2f} after {counting.position(0, generations, 0, epochs)} is "
            f"{loss / chance:.1f} x chance (ln {num_classes} = {chance:.2f}): the network is not "
            f"learning, most likely because the learning rate is too high for this data; stop "
            f"and try --lr {lr / 10:g} (now {lr:g})")


def data_warnings(train_targets, classes, batch_size: int) -> list[str]:
    """What the numbers of a run on this training split will mean, when it is too small for a
    batch or has a class of fewer than 2 images."""
    found = []
    n = len(train_targets)
    if n < batch_size:
        found.append(f"the training split has {n} image(s), fewer than one batch of "
                     f"{batch_size}: every epoch is a single step on all of them, so an "
                     f"'epoch' here is one optimiser step; lower --batch_size or add images")
    counts = Counter(int(t) for t in train_targets)
    small = [(classes[c] if c < len(classes) else c, counts.get(c, 0))
             for c in range(len(classes)) if counts.get(c, 0) < 2]
    if small:
        names = short(f"{name} ({count})" for name, count in small)
        found.append(f"{len(small)} class(es) have fewer than 2 training images: {names}; the "
                     f"network sees one example of each, so their test scores measure chance or "
                     f"memorisation rather than learning; add images to these classes")
    return found
