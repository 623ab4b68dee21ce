"""Flags that fix the data of a comparison: a validation split held out of the training split,
and synthetic label noise. Both are drawn from seeds of their own, never from --seed, so every
method and every training seed of a comparison sees the same split and the same noisy labels."""
from argtypes import RECIPE, number
from data import NOISE_TYPES

FRACTION = number(float, 0.0, 1.0, high_open=True, what="a fraction in [0, 1)")
DATA_SEED = number(int, 0, 2**32 - 1, what=f"an integer in [0, {2**32 - 1}]")


def add_flags(p):
    g = p.add_argument_group("comparison data (validation hold-out, label noise)")
    g.add_argument("--val_fraction", default=0.0, type=FRACTION, metavar="F", role=RECIPE,
                   help="hold out this class-stratified fraction of the training split as the "
                        "validation split, for a dataset without one (saved as val_split.csv); "
                        "0: validate on the test split there, as the reference does (default: 0)")
    g.add_argument("--split_seed", default=0, type=DATA_SEED, role=RECIPE,
                   help="seed of the --val_fraction hold-out, independent of --seed (default: 0)")
    g.add_argument("--label_noise", default=0.0, type=FRACTION, metavar="P", role=RECIPE,
                   help="change each training label with probability P (validation and test stay "
                        "clean; saved as noisy_labels.csv) (default: 0)")
    g.add_argument("--noise_type", default="symmetric", choices=NOISE_TYPES, role=RECIPE,
                   help="symmetric: a uniformly drawn other class; pairflip: the next class, "
                        "c -> c+1 mod C (default: %(default)s)")
    g.add_argument("--noise_seed", default=None, type=DATA_SEED, role=RECIPE,
                   help="seed of the label noise, independent of --seed (default: --split_seed)")


def check(cfg, fail):
    """--task retrieval is refused with either: it trains on half of the classes and searches
    the other half (no validation to hold out), and the noise is defined for classifiers."""
    if getattr(cfg, "task", "classification") != "retrieval":
        return
    for flag in ("val_fraction", "label_noise"):
        if getattr(cfg, flag, 0.0) > 0:
            fail(f"argument --{flag}: only for --task classification (retrieval trains on "
                 f"half of the classes and searches the other half); drop --{flag}")
