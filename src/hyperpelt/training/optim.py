"""The optimizer and learning-rate schedule of a run."""

from __future__ import annotations

import torch


def optimizer_and_schedule(model, config, head_learning_rate: float | None):
    """AdamW or Adafactor over the model's trained weights (the task heads in a group of their own, at
    ``head_learning_rate`` if given) and its schedule: linear warmup, then constant or linear decay."""
    heads = {id(p) for p in model.heads.parameters()} if model.heads is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
    groups = [{"params": params, "lr": config.learning_rate}]
    trained_heads = [p for p in model.heads.parameters() if p.requires_grad] if heads else []
    if trained_heads:
        groups.append({"params": trained_heads, "lr": head_learning_rate or config.learning_rate})
    if config.optimizer == "adafactor":  # constant learning rate, as Raffel et al. (2020) fine-tune T5
        from transformers.optimization import Adafactor

        optimizer = Adafactor(groups, lr=config.learning_rate, scale_parameter=False, relative_step=False,
                              warmup_init=False, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    warmup, steps = config.warmup_steps, config.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 if config.schedule == "constant" else max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
