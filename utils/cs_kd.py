"""The class-wise self-knowledge distillation loss (CS-KD, `--cs_kd`).

Yun et al., "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020.
For a pair (x, x') of two different samples of the same class, the network's softened
prediction on x is pulled towards its own (fixed) softened prediction on x':

    p = softmax(z / T),   q = softmax(stopgrad(z') / T)          z, z' logits of x, x'
    L_cls = T^2 * (1/P) * sum_pairs sum_c q_c * (log q_c - log p_c)    = T^2 * mean KL(q || p)

(the KL divergence of p from q, summed over the classes, averaged over the P pairs, scaled by
T^2 so that its gradient keeps its size as T changes, as in Hinton et al.'s distillation). No
gradient flows through z'. The training objective is

    L = CE(z, y) + weight * L_cls

with the cross-entropy over the ANCHORS only (the first half of a paired batch). That is the
paper's objective and the original implementation's: the anchors are every training sample once
per epoch (data/cs_kd.py), so CE sees the data exactly as plain training does, while the partners
(extra same-class draws) serve only as the distillation targets. Adding their CE would weight some
samples twice per epoch and change the effective learning rate of the CE term.

Batches come from data.cs_kd.PairBatchSampler: anchors in the first half, partners in the second.
"""
import torch
import torch.nn.functional as F

DEFAULT_WEIGHT = 3.0
DEFAULT_TEMPERATURE = 4.0


def cs_kd_loss(logits_first: torch.Tensor, logits_second: torch.Tensor,
               temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """T^2 * mean over pairs of KL(softmax(second/T) || softmax(first/T)); `second` is detached.

    logits_first, logits_second: [P, K] logits of the two samples of P same-class pairs.
    """
    if logits_first.shape != logits_second.shape or logits_first.dim() != 2:
        raise ValueError(f"need two [pairs, classes] logit tensors of one shape, got "
                         f"{tuple(logits_first.shape)} and {tuple(logits_second.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_p = F.log_softmax(logits_first.float() / t, dim=1)
    log_q = F.log_softmax(logits_second.detach().float() / t, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)          # one KL per pair
    return kl.mean() * (t * t)


def cs_kd_forward(model, images: torch.Tensor, targets: torch.Tensor, criterion,
                  weight: float = DEFAULT_WEIGHT, temperature: float = DEFAULT_TEMPERATURE):
    """One CS-KD training step's forward, as the CS-KD authors' code and the reference run it:
    the anchors (first half of a PairBatchSampler batch) with gradients, then the partners in a
    second pass under `torch.no_grad()`, so BatchNorm sees two half-batches.

    Returns (loss, anchor logits, anchor targets): CE(anchors) + weight * cs_kd_loss(anchors,
    partners), and what the training statistics are computed on.
    """
    n = images.shape[0]
    if n % 2 or n == 0:
        raise ValueError(f"a CS-KD batch holds anchors and partners, so its size must be even; "
                         f"got {n} (use data.cs_kd.PairBatchSampler)")
    half = n // 2
    logits = model(images[:half])
    with torch.no_grad():
        partner_logits = model(images[half:])
    loss = criterion(logits, targets[:half]) + weight * cs_kd_loss(logits, partner_logits,
                                                                   temperature)
    return loss, logits, targets[:half]
