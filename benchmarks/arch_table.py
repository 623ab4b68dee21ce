"""README table of architectures: dense and slim parameters and GFLOPs at one split rate.

Models are built on the meta device (shapes only), so the whole table takes seconds. GFLOPs are
those the run logs (torch.utils.flop_counter, a multiply-add counts two), for one 3xSxS image.
"""
import argparse

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from configs.base_config import Config
from models.factory import get_model
from models.graph_split import slim_exists
from utils.model_profile import count_flops, count_parameters

DEFAULT = ("Split_ResNet18", "Split_ResNet50", "Split_densenet121", "Split_googlenet",
           "Split_vgg11_bn", "Split_wide_resnet50_2", "Split_resnext50_32x4d",
           "Split_mobilenet_v2", "Split_mobilenet_v3_large", "Split_efficientnet_b0",
           "Split_regnet_y_400mf", "Split_mnasnet1_0", "Split_squeezenet1_1",
           "Split_convnext_tiny", "Split_shufflenet_v2_x1_0")


def row(arch: str, split_rate: float, image_size: int) -> str:
    cfg = Config().parse(["--arch", arch, "--split_rate", str(split_rate)])
    with torch.device("meta"):
        dense = get_model(cfg)
        slim = get_model(cfg, slim=True) if slim_exists(arch) else None
    cells = [f"{count_parameters(dense) / 1e6:.2f}M", f"{count_flops(dense, image_size) / 1e9:.2f}"]
    if slim is None:
        cells += ["no slim network", "-"]
    else:
        cells += [f"{count_parameters(slim) / 1e6:.2f}M", f"{count_flops(slim, image_size) / 1e9:.2f}"]
    return f"| `{arch}` | " + " | ".join(cells) + " |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=list(DEFAULT))
    p.add_argument("--split_rate", type=float, default=0.5)
    p.add_argument("--image_size", type=int, default=224)
    args = p.parse_args(argv)
    print(f"| arch | dense params | dense GFLOPs | slim params (s={args.split_rate}) | "
          f"slim GFLOPs |")
    print("|---|---|---|---|---|")
    for arch in args.arch:
        print(row(arch, args.split_rate, args.image_size), flush=True)


if __name__ == "__main__":
    main()
