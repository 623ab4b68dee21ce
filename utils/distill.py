"""Born-again distillation (`--distill_previous`): the previous generation teaches the next.

Furlanello et al., "Born-Again Neural Networks", ICML 2018. From generation 1 on, the training
loss adds

    weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

summed over the classes and averaged over the batch, the teacher being the previous generation's
last weights, frozen, in eval mode and run without gradients. T^2 keeps the term's gradient of
the same size as T changes (Hinton et al. 2015).
"""
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 * mean over the batch of KL(softmax(teacher/T) || softmax(student/T))."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


def frozen(teacher: nn.Module) -> nn.Module:
    """`teacher` in eval mode (BatchNorm uses its running statistics) with no gradients."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class TeacherForward:
    """A `forward` for trainers.engine.train_one_epoch that adds the distillation term to the
    loss of `inner` (another such forward, e.g. CS-KD's, or the plain cross-entropy step).

    The inner forward returns the logits of the first rows of the batch (all of them, or
    CS-KD's anchors); the teacher sees those same images."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float,
                 inner: Callable | None = None):
        self.teacher, self.weight, self.temperature = frozen(teacher), weight, temperature
        self.inner = inner

    def __call__(self, model, images, target, criterion):
        if self.inner is None:
            logits = model(images)
            loss = criterion(logits, target)
        else:
            loss, logits, target = self.inner(model, images, target, criterion)
        with torch.no_grad():
            teacher_logits = self.teacher(images[:logits.shape[0]])
        loss = loss + self.weight * distillation_loss(logits, teacher_logits, self.temperature)
        return loss, logits, target
