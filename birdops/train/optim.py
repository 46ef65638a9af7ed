"""The optimizer and learning-rate schedule that fine-tuning and pretraining share.

``make_optimizer`` builds AdamW over four named groups: ``backbone`` / ``head`` (``classifier.*``) at
their own learning rates (the report's discriminative rates), each with a ``*_no_decay`` twin for
biases, norms and tokens. ``lr_factor`` is the per-step multiplier of those rates: optional linear
warmup, then constant or cosine annealing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from birdops.config import OptimParams, ScheduleParams
from birdops.models.factory import is_head

NO_DECAY_SUFFIXES = ("bias", "cls_token", "distillation_token", "position_embeddings")


def make_optimizer(model: nn.Module, optim: OptimParams, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over four named groups: ``backbone`` / ``head`` (``classifier.*``) at their own learning
    rates, each split into weights (with weight decay) and ``*_no_decay`` (biases, norms, tokens).
    ``fused``: one kernel for the whole update (``torch.optim.AdamW(fused=True)``) instead of the
    per-tensor-list ``foreach`` one; it rounds differently, so it is a parameter."""
    groups: dict[str, list[nn.Parameter]] = {
        "backbone": [],
        "backbone_no_decay": [],
        "head": [],
        "head_no_decay": [],
    }
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if is_head(name) else "backbone"
        no_decay = parameter.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)
        groups[part + ("_no_decay" if no_decay else "")].append(parameter)
    lr = {"backbone": optim.backbone_lr, "head": optim.head_lr}
    param_groups = [
        {
            "name": name,
            "params": members,
            "lr": lr[name.removesuffix("_no_decay")],
            "base_lr": lr[name.removesuffix("_no_decay")],  # what the schedule scales
            "weight_decay": 0.0 if name.endswith("_no_decay") else optim.weight_decay,
        }
        for name, members in groups.items()
        if members
    ]
    return torch.optim.AdamW(param_groups, fused=True if fused else None)


@dataclass(frozen=True)
class Schedule:
    """Learning rate of each param group at optimizer step ``step``: ``base_lr * lr_factor(step)``."""

    total_steps: int
    warmup_steps: int
    params: ScheduleParams

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        factor = lr_factor(step, self.total_steps, self.warmup_steps, self.params)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor


def lr_factor(step: int, total_steps: int, warmup_steps: int, params: ScheduleParams) -> float:
    """Multiplier of the base learning rates at optimizer step ``step`` (0-based).

    Linear warmup from ``1 / warmup_steps`` to 1 over ``warmup_steps`` (none by default: warmup
    made the report's transfer learning diverge), then ``constant`` 1 or ``cosine`` annealing from
    1 down to ``min_lr_ratio`` at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if params.kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return params.min_lr_ratio + (1.0 - params.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
