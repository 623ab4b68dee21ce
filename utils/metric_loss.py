"""The metric-learning loss of --task retrieval and its training step (pytorch-metric-learning).

`build_loss(cfg, num_classes)`: ProxyAnchorLoss (--alpha, --margin; one proxy per training
class, a parameter of the loss) or MultiSimilarityLoss. `metric_forward` is train_one_epoch's
`forward` hook: the loss of the batch's embeddings, and similarities to score the training
top-1 with (to the proxies, or for multi_similarity to the batch's class centres).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_metric_learning import losses
from torch.nn.modules.batchnorm import _BatchNorm

from utils import ML_LOSSES

PROXY_LR_SCALE = 100.0      # the recipe's proxies learn at 100 x --lr


def build_loss(cfg, num_classes: int, generator: torch.Generator) -> nn.Module:
    """The --ml_loss of `cfg` for `num_classes` training classes; proxies drawn from `generator`
    (PML's own initialisation, normal, would draw from the global generator)."""
    if cfg.ml_loss == "proxy_anchor":
        loss = losses.ProxyAnchorLoss(num_classes, cfg.embedding_size, margin=cfg.margin,
                                      alpha=cfg.alpha)
        with torch.no_grad():
            loss.proxies.copy_(torch.randn(loss.proxies.shape, generator=generator))
        return loss
    if cfg.ml_loss == "multi_similarity":
        return losses.MultiSimilarityLoss()
    raise ValueError(f"unknown --ml_loss {cfg.ml_loss!r}; choose from {', '.join(ML_LOSSES)}")


def proxies(loss: nn.Module):
    """The proxies of `loss` (a parameter), or None for a loss without them."""
    return getattr(loss, "proxies", None)


def freeze_batchnorm(model: nn.Module):
    """--bn_freeze: every BatchNorm in eval mode (running statistics used and kept)."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()


def class_scores(embeddings: torch.Tensor, target: torch.Tensor, loss: nn.Module,
                 num_classes: int) -> torch.Tensor:
    """[N, num_classes] cosine similarities of the embeddings to the proxies, or (no proxies)
    to the mean embedding of each class present in the batch (absent classes: -2)."""
    weights = proxies(loss)
    if weights is not None:
        return F.normalize(embeddings, dim=1) @ F.normalize(weights.detach(), dim=1).t()
    one_hot = F.one_hot(target, num_classes).to(embeddings.dtype)
    centres = F.normalize(one_hot.t() @ embeddings.detach(), dim=1)
    scores = F.normalize(embeddings, dim=1) @ centres.t()
    return torch.where(one_hot.sum(0) > 0, scores, torch.full_like(scores, -2.0))


def metric_forward(bn_freeze: bool, num_classes: int):
    """train_one_epoch's `forward(model, images, target, criterion)` for metric learning."""
    def forward(model, images, target, criterion):
        if bn_freeze:
            freeze_batchnorm(model)
        embeddings = model(images)
        loss = criterion(embeddings.float(), target)
        return loss, class_scores(embeddings.float(), target, criterion, num_classes), target
    return forward
