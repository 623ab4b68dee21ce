"""Command-line flags of `train_KE_cls.py`. Defaults are the paper's Flowers-102 recipe.

`Config().parse(argv)` returns the resolved configuration without touching the disk.
"""
import argparse
import math
import sys

import constants
from data.catalog import CATALOG
from layers.split_base import EVOLVE_MODES, SPLIT_MODES
from models import ARCHITECTURES
from models.names import GRAPH_DERIVED, HAND_WRITTEN
from models.builder import BN_TYPES, CONV_TYPES, INITS, LINEAR_TYPES

LR_POLICIES = ("constant_lr", "cosine_lr", "step_lr", "multistep_lr")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag as a single line (no usage block) and exits with status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, low=None, high=None, low_open=False, what=""):
    """argparse type: a `kind` number within [low, high] ((low, high] when `low_open`)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}")
        if not math.isfinite(value):  # nan compares False with every bound, so it would pass
            raise argparse.ArgumentTypeError(f"expected {what or 'a finite number'}, got {text}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


RATE = _number(float, 0.0, 1.0, low_open=True, what="a rate in (0, 1]")
POSITIVE_INT = _number(int, 1, what="an integer >= 1")
NON_NEGATIVE_INT = _number(int, 0, what="an integer >= 0")
POSITIVE_FLOAT = _number(float, 0.0, low_open=True, what="a number > 0")
NON_NEGATIVE_FLOAT = _number(float, 0.0, what="a number >= 0")
SMOOTHING = _number(float, 0.0, 0.999, what="a label smoothing in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="train_KE_cls.py",
                      description="Knowledge Evolution: train a network over generations, "
                                  "re-initialising its reset hypothesis at each one.")
    add = p.add_argument

    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="datasets directory (default: constants.datasets_dir)")
    g.add_argument("--set", default="Flower102Pytorch", choices=sorted(CATALOG),
                   help="dataset (default: %(default)s)")
    g.add_argument("--image_size", default=224, type=POSITIVE_INT,
                   help="crop size; evaluation resizes to round(size*256/224) first (default: 224)")
    g.add_argument("-t", "--num_threads", default=8, type=NON_NEGATIVE_INT, metavar="N",
                   help="data-loading workers (default: 8)")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="drop the rows whose image is missing or unreadable (logged with a "
                        "count) instead of stopping with an error")

    g = p.add_argument_group("model and split")
    g.add_argument("-a", "--arch", default="Split_ResNet18", choices=list(ARCHITECTURES),
                   metavar="ARCH", help=f"one of {', '.join(HAND_WRITTEN)} (default: %(default)s), "
                   "or Split_<name> for a torchvision CNN split from its torch.fx graph "
                   f"({', '.join(n[6:] for n in GRAPH_DERIVED)}); ConvNeXt and ShuffleNet mix "
                   "channels, so they train with KE but have no slim network (no slim rows)")
    g.add_argument("--split_rate", default=0.5, type=RATE,
                   help="fraction of each layer in the fit hypothesis, in (0, 1] (default: 0.5)")
    g.add_argument("--bias_split_rate", default=None, type=RATE,
                   help="fit fraction of non-classifier biases (default: --split_rate)")
    g.add_argument("--split_mode", default="kels", choices=SPLIT_MODES,
                   help="kels: kernel-level (has a slim network); wels: weight-level random")
    g.add_argument("--evolve_mode", default="rand", choices=EVOLVE_MODES,
                   help="re-draw the reset hypothesis randomly or set it to zero (default: rand)")
    g.add_argument("--reset_hypothesis", action="store_true",
                   help="WELS only: draw a new mask every generation")
    g.add_argument("--conv_type", default="SplitConv", choices=list(CONV_TYPES))
    g.add_argument("--bn_type", default="SplitBatchNorm", choices=list(BN_TYPES))
    g.add_argument("--linear_type", default="SplitLinear", choices=list(LINEAR_TYPES))
    g.add_argument("--init", default="kaiming_normal", choices=INITS,
                   help="conv weight initialisation (default: %(default)s)")
    g.add_argument("--mode", default="fan_in", choices=("fan_in", "fan_out"))
    g.add_argument("--nonlinearity", default="relu", choices=NONLINEARITIES)
    g.add_argument("--scale-fan", dest="scale_fan", action="store_true",
                   help="scale the init fan by the split rate")
    g.add_argument("--pretrained", default=None, metavar="PATH",
                   help="start generation 0 from these weights")

    g = p.add_argument_group("training")
    g.add_argument("--num_generations", default=5, type=POSITIVE_INT,
                   help="number of generations G (default: 5)")
    g.add_argument("--epochs", default=200, type=POSITIVE_INT,
                   help="epochs per generation E (default: 200)")
    g.add_argument("-b", "--batch_size", default=32, type=POSITIVE_INT,
                   help="total mini-batch size across all processes (default: 32)")
    g.add_argument("--lr", "--learning-rate", dest="lr", default=0.256, type=POSITIVE_FLOAT,
                   help="initial learning rate (default: 0.256)")
    g.add_argument("--lr_policy", default="cosine_lr", choices=LR_POLICIES)
    g.add_argument("--warmup_length", default=5, type=NON_NEGATIVE_INT,
                   help="linear warm-up epochs, restarted every generation (default: 5)")
    g.add_argument("--multistep-lr-adjust", dest="multistep_lr_adjust", default=30,
                   type=POSITIVE_INT, help="multistep_lr: epochs between drops (default: 30)")
    g.add_argument("--multistep-lr-gamma", dest="multistep_lr_gamma", default=0.1,
                   type=POSITIVE_FLOAT, help="multistep_lr: factor at each drop (default: 0.1)")
    g.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    g.add_argument("--momentum", default=0.9, type=NON_NEGATIVE_FLOAT)
    g.add_argument("--wd", "--weight_decay", dest="weight_decay", default=1e-4,
                   type=NON_NEGATIVE_FLOAT, help="weight decay (default: 1e-4)")
    g.add_argument("--no-bn-decay", dest="no_bn_decay", action="store_true",
                   help="no weight decay on BatchNorm parameters and biases")
    g.add_argument("--label_smoothing", default=0.1, type=SMOOTHING,
                   help="label smoothing of the cross-entropy, 0 disables (default: 0.1)")
    g.add_argument("--cs_kd", action="store_true",
                   help="class-wise self-knowledge distillation: batches of same-class pairs, "
                        "loss + 3 x KL at temperature 4")
    g.add_argument("--reset_layer_name", default=None, metavar="PREFIX",
                   help="later-layer forgetting: each generation re-initialise every layer whose "
                        "name starts with PREFIX (e.g. layer4) wholly and keep the rest (no slim row)")
    g.add_argument("--reset_bn", action="store_true",
                   help="with --reset_layer_name: also reset those layers' BatchNorm")
    g.add_argument("--trainer", default="default", choices=("default",),
                   help="training loop (default: %(default)s)")
    g.add_argument("--seed", default=None, type=int, help="random seed (default: none)")

    g = p.add_argument_group("device")
    g.add_argument("--gpu", default=None, type=NON_NEGATIVE_INT,
                   help="CUDA device index (default: 0 when CUDA is present, else the CPU; "
                        "under torchrun each process uses its LOCAL_RANK)")
    g.add_argument("--sync_bn", action="store_true",
                   help="under torchrun: synchronise BatchNorm statistics across processes")

    g = p.add_argument_group("performance")
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="mixed precision: bf16 autocast (CPU or GPU), fp16 autocast with a "
                        "gradient scaler (GPU only); weights stay float32 (default: none)")
    g.add_argument("--channels_last", action="store_true",
                   help="channels-last memory format for the model and its inputs (faster "
                        "convolutions on recent GPUs, mostly with --amp)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (slow first epoch; off by default)")
    g.add_argument("--cache_images", action="store_true",
                   help="decode every image once and keep it, resized, as uint8 in shared "
                        "memory that all data-loading workers read; augmentations then run on "
                        "tensors")
    g.add_argument("--cache_short_side", default=None, type=POSITIVE_INT, metavar="N",
                   help="with --cache_images: shorter side of the cached training images; "
                        "smaller originals are kept as they are (default: 2 x --image_size, "
                        "so every random crop covering a quarter of the image or more is "
                        "still downscaled, never enlarged, to --image_size)")

    g = p.add_argument_group("outputs")
    g.add_argument("--name", default=None, help="experiment name (default: built from the settings)")
    g.add_argument("--log-dir", dest="log_dir", default=None, metavar="DIR",
                   help="checkpoints directory (default: constants.checkpoints_dir)")
    g.add_argument("--log_file", default="train_log.txt", help="log file name in the experiment folder")
    g.add_argument("--test_interval", default=10, type=POSITIVE_INT,
                   help="validate every N epochs and at the last one (default: 10)")
    g.add_argument("--save_every", default=-1, type=int,
                   help="also keep a checkpoint every N epochs (default: -1, never)")
    g.add_argument("-p", "--print-freq", dest="print_freq", default=10000, type=POSITIVE_INT,
                   help="log a line every N batches (default: 10000)")
    g.add_argument("--evaluate", default=None, metavar="CKPT",
                   help="no training: evaluate a checkpoint (or an exported slim .pt2 file) on "
                        "the validation and test splits")
    g.add_argument("--export_slim", nargs=2, default=None, metavar=("CKPT", "OUT"),
                   help="no training: write the slim network of checkpoint CKPT to OUT (.pt2), "
                        "loadable with utils.net_utils.load_exported")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="continue the experiment named by --name where it stopped; with a "
                        "path, continue from that checkpoint")
    return p


def default_name(cfg) -> str:
    return (f"SPLT_CLS_{cfg.set}_{cfg.arch}_cskd{cfg.cs_kd}_smth{cfg.label_smoothing > 0}"
            f"_k{cfg.split_rate}_G{cfg.num_generations}_e{cfg.epochs}_ev{cfg.evolve_mode}"
            f"_hReset{cfg.reset_hypothesis}_sm{cfg.split_mode}")


class Config:
    def __init__(self):
        self.parser = build_parser()

    def _given_flags(self, argv) -> set:
        """Destinations of the flags written on the command line (not left at their default)."""
        probe = build_parser()
        for action in probe._actions:
            action.default = argparse.SUPPRESS
        return set(vars(probe.parse_args(argv)))

    def parse(self, argv=None) -> argparse.Namespace:
        argv = sys.argv[1:] if argv is None else list(argv)
        cfg = self.parser.parse_args(argv)
        cfg.given_flags = sorted(self._given_flags(argv))
        if cfg.reset_hypothesis and cfg.split_mode != "wels":
            self.parser.error("argument --reset_hypothesis: needs --split_mode wels "
                              "(KELS masks are fixed by the split rate)")
        if cfg.reset_bn and not cfg.reset_layer_name:
            self.parser.error("argument --reset_bn: needs --reset_layer_name PREFIX")
        if cfg.cs_kd and cfg.batch_size % 2:
            self.parser.error(f"argument --cs_kd: needs an even --batch_size (pairs), got {cfg.batch_size}")
        cfg.data = cfg.data or constants.datasets_dir
        cfg.log_dir = cfg.log_dir or constants.checkpoints_dir
        if cfg.bias_split_rate is None:
            cfg.bias_split_rate = cfg.split_rate
        cfg.num_cls = CATALOG[cfg.set].num_classes
        fixed_size = CATALOG[cfg.set].image_size          # CIFAR: the images are 32x32
        if fixed_size is not None and cfg.image_size != fixed_size:
            if "image_size" in cfg.given_flags:
                self.parser.error(f"argument --image_size: --set {cfg.set} has {fixed_size}x"
                                  f"{fixed_size} images; pass --image_size {fixed_size} or drop it")
            cfg.image_size = fixed_size
        cfg.name = cfg.name or default_name(cfg)
        return cfg
