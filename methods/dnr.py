"""Dynamic Neural Regeneration (Ramkumar, Arani & Zonooz, NeurIPS 2024).

At each generation g >= 1 every conv and linear weight of generation g - 1's trained network is
scored by SNIP saliency: |w| times the absolute gradient of the task's loss, summed over
--dnr_batches training mini-batches (BatchNorm in eval mode, so its running statistics stay as
they are). One global threshold keeps the most salient fraction --dnr_sparsity of the scored
weights (the authors' meaning: S is the fraction kept, 0.2 in their configuration); the rest
come from this generation's fresh draw (the run's --init). The kept set is written to
`gen_<g>/dnr_kept.pt` (bit-packed, read with weights_only=True), and the trained network is also
tested with only the kept weights (the rest zeroed), as the authors do: the "kept" rows.

Where ours differs from the authors' code, on purpose:
- their saliency pool holds every parameter (BatchNorm and biases too) and they re-draw only
  conv and linear weights outside BatchNorm and the downsample shortcuts, with
  kaiming_uniform(a=sqrt(5)) whatever the run's init: `--dnr_pool authors` does that (the draw
  from the method's own generator); ours scores and re-draws every conv and linear weight;
- they score ceil(batches per epoch / 32) mini-batches (one for Flowers-102); ours takes
  --dnr_batches, 1 by default;
- their network scores in training mode (BatchNorm statistics move); ours in eval mode.
"""
import logging
import math

from argtypes import OPEN_UNIT, POSITIVE_INT
from methods import Method, register
from utils import counting

log = logging.getLogger("ke")
MASK_FILE = "dnr_kept.pt"
POOLS = ("weights", "authors")


@register("dnr")
class DynamicRegeneration(Method):
    summary = ("conv/linear weights below a global SNIP-saliency threshold, re-drawn from a "
               "fresh draw")
    paper = "Ramkumar et al., NeurIPS 2024"
    flags = {
        "--dnr_sparsity": dict(default=0.2, type=OPEN_UNIT, metavar="S",
                               help="fraction of the scored weights kept, in (0, 1)"),
        "--dnr_batches": dict(default=1, type=POSITIVE_INT, metavar="N",
                              help="training mini-batches the saliency is summed over"),
        "--dnr_pool": dict(default="weights", choices=POOLS,
                           help="weights: score and re-draw every conv/linear weight from the "
                                "run's --init; authors: score every parameter and re-draw conv/"
                                "linear weights outside the downsample shortcuts with "
                                "kaiming_uniform(a=sqrt(5)), as the authors' code"),
    }
    slim_reason = ("--forget dnr keeps weights by saliency, not a fit hypothesis, so there is no "
                   "slim network (its kept rows test the kept weights)")

    def forget(self, ctx):
        import torch
        cfg = ctx.cfg
        scored, redrawn = pools(ctx.previous, cfg.dnr_pool)
        scores = saliency(ctx, dict(scored))
        kept = kept_sets(scores, cfg.dnr_sparsity)
        start = ctx.previous.state_dict()
        fresh = ctx.fresh.state_dict()
        with torch.no_grad():
            for name in redrawn:
                if cfg.dnr_pool == "authors":
                    draw = torch.empty_like(start[name])
                    torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=ctx.generator)
                else:
                    draw = fresh[name]
                start[name] = torch.where(kept[name], start[name], draw)
        ctx.fresh.load_state_dict(start)
        report(ctx, kept)
        ctx.save(pack(kept), MASK_FILE)
        return ctx.fresh

    def extra_rows(self, cfg, folder, model):
        import os
        path = os.path.join(folder, MASK_FILE)
        if not os.path.isfile(path):            # generation 0: nothing was re-drawn
            return []
        return [("kept", with_only_kept(model, unpack_file(path)))]


def pools(model, pool: str):
    """(scored [(name, parameter)], re-drawn names): conv and linear weights, or the authors'."""
    import torch.nn as nn
    weights = [(f"{layer_name}.weight", layer.weight) for layer_name, layer in model.named_modules()
               if isinstance(layer, (nn.Conv2d, nn.Linear))]
    if pool == "weights":
        return weights, [name for name, _ in weights]
    return (list(model.named_parameters()),
            [name for name, _ in weights if "downsample" not in name.split(".")])


def saliency(ctx, scored: dict) -> dict:
    """{name: |w| * sum over ctx's batches of |d loss / d w|}, computed on a copy of the
    previous network in eval mode on the device."""
    import copy

    import torch
    model = copy.deepcopy(ctx.previous).to(ctx.device).eval()
    params = dict(model.named_parameters())
    wanted = [params[name] for name in scored]
    totals = [torch.zeros_like(p) for p in wanted]
    for images, targets in ctx.batches(ctx.cfg.dnr_batches):
        loss = ctx.loss(model(images), targets)
        for total, grad in zip(totals, torch.autograd.grad(loss, wanted), strict=True):
            total += grad.abs()
    return {name: (total * p.detach().abs()).cpu()
            for name, total, p in zip(scored, totals, wanted, strict=True)}


def kept_sets(scores: dict, fraction: float) -> dict:
    """{name: bool tensor}: the round(fraction * n) highest scores of all n scored weights,
    above one global threshold."""
    import torch
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, round(fraction * flat.numel()))
    threshold = torch.kthvalue(flat, flat.numel() - keep).values if keep < flat.numel() else None
    return {name: (s > threshold) if threshold is not None else torch.ones_like(s, dtype=torch.bool)
            for name, s in scores.items()}


def report(ctx, kept: dict):
    """Log the fraction kept per stage and the overlap with the previous generation's set."""
    import os

    from models.evolution import network_stages
    total = sum(int(k.sum()) for k in kept.values())
    size = sum(k.numel() for k in kept.values())
    parts = []
    try:
        layout = network_stages(ctx.fresh)
        groups = [("stage " + str(i + 1), stage) for i, stage in enumerate(layout.stages)]
        groups.append(("head", layout.head))
    except ValueError:
        groups = []
    staged = [p for _, prefixes in groups for p in prefixes]
    groups.insert(0, ("stem", [n.rsplit(".", 1)[0] for n in kept
                               if not any(n.startswith(p + ".") for p in staged)]))
    for label, prefixes in groups:
        names = [n for n in kept if any(n.startswith(p + ".") for p in prefixes)]
        if names:
            share = sum(int(kept[n].sum()) for n in names) / sum(kept[n].numel() for n in names)
            parts.append(f"{label} {share:.1%}")
    line = (f"{counting.generation(ctx.generation, ctx.num_generations)}: dnr kept {total:,} of "
            f"{size:,} weights ({total / size:.1%})")
    if parts:
        line += "; by stage: " + ", ".join(parts)
    before = os.path.join(os.path.dirname(ctx.folder), f"gen_{ctx.generation - 1}", MASK_FILE)
    if os.path.isfile(before):
        previous = unpack_file(before)
        common = sum(int((kept[n] & previous[n]).sum()) for n in kept if n in previous)
        line += f"; {common / max(1, total):.1%} of them were kept at generation {ctx.generation - 1}"
    log.info(line)


def pack(kept: dict) -> dict:
    """{name: (uint8 bits, shape)} of bool tensors: one bit per weight."""
    import numpy as np
    import torch
    return {name: {"bits": torch.from_numpy(np.packbits(k.numpy().reshape(-1))),
                   "shape": torch.tensor(k.shape)} for name, k in kept.items()}


def unpack_file(path: str) -> dict:
    import numpy as np
    import torch
    packed = torch.load(path, weights_only=True, map_location="cpu")
    kept = {}
    for name, entry in packed.items():
        shape = tuple(int(n) for n in entry["shape"])
        bits = np.unpackbits(entry["bits"].numpy(), count=math.prod(shape))
        kept[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    return kept


def with_only_kept(model, kept: dict):
    """A copy of `model` whose weights outside the kept sets are zero."""
    import copy

    import torch
    sparse = copy.deepcopy(model)
    params = dict(sparse.named_parameters())
    with torch.no_grad():
        for name, mask in kept.items():
            params[name].mul_(mask.to(params[name].device))
    return sparse
