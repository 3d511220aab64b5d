"""Parameter accounting: counts of the instantiated modules (built on the meta device, no weights),
never a formula, expressed as the papers do (total as a multiple of the backbone, trained per task as a
percentage of the backbone)."""

from __future__ import annotations

import torch

from .config import ModelConfig
from .errors import UserError
from .model import TunedModel
from .tasks import get_task

GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


def count_parameters(model_name: str, method: dict, num_tasks: int) -> dict:
    """``{"method", "backbone_params", "total_params", "trainable_params", "total_multiple", "trained_pct",
    "trained_per_task_pct"}`` for ``num_tasks`` tasks (GLUE's, in the papers' order, repeated if needed)."""
    if num_tasks < 1:
        raise UserError("--tasks must be >= 1")
    tasks = [get_task(GLUE[i % len(GLUE)]) for i in range(num_tasks)]
    with torch.device("meta"):
        model = TunedModel(ModelConfig(name=model_name, pretrained=False), method, tasks)
    trainable, total = model.parameter_counts()
    backbone = model.backbone_params
    return {
        "method": model.method.name,
        "backbone_params": backbone,
        "total_params": total,
        "trainable_params": trainable,
        "total_multiple": total / backbone,
        "trained_pct": 100.0 * trainable / backbone,
        "trained_per_task_pct": 100.0 * trainable / num_tasks / backbone,
    }


def describe_counts(model_name: str, num_tasks: int, counts: dict) -> str:
    """``count_parameters``' figures as lines of text."""
    return "\n".join([
        f"model {model_name}, method {counts['method']}, {num_tasks} tasks",
        f"backbone parameters   {counts['backbone_params']:,}",
        f"total parameters      {counts['total_params']:,} ({counts['total_multiple']:.3f}x the backbone)",
        f"trained parameters    {counts['trainable_params']:,} "
        f"({counts['trained_pct']:.2f}% of the backbone)",
        f"trained per task      {counts['trained_per_task_pct']:.3f}% of the backbone",
    ])


# (model, method) -> trained parameters per task (% of the backbone) and total multiple in the papers' tables
# (HyperPELT Table 1, Hyperformer Table 1), 8 GLUE tasks; None where the paper gives no multiple.
PAPER = {
    ("t5-base", "hyperpelt"): (0.24, 1.02),
    ("t5-base", "hyperformer++"): (0.29, 1.02),
    ("t5-base", "adapters-shared"): (0.82, 1.07),
    ("t5-base", "prefix"): (1.72, 1.14),
    ("t5-base", "mam"): (2.96, 1.15),
    ("t5-base", "hyperformer"): (6.86, 1.54),
    ("t5-base", "full"): (12.5, 1.0),
    ("t5-small", "hyperformer++"): (0.50, 1.04),
    ("t5-small", "hyperformer"): (5.80, 1.45),
    ("t5-small", "adapters-shared"): (0.68, 1.05),
}


# Variants of a method counted beside the paper's figure: the readings of a choice the paper leaves open.
VARIANTS = {
    ("t5-base", "hyperpelt"): ({"layer_block_embeddings": "vectors"},),
}


# V&L methods of HyperPELT Table 2: trained parameters of the multi-task model (VQA, GQA, COCO captions,
# VG-QA), % of T5-base, with 2048-d image features (the CLIP RN101 grid).
PAPER_VL = {("t5-base", "vl-hyperpelt"): 6.62, ("t5-base", "vl-adapter"): 7.16, ("t5-base", "clip-t5"): 100.0}
VL_TASKS = 4
VL_VARIANTS = {
    ("t5-base", "vl-hyperpelt"): ({"visual_input": "tokens"}, {"visual_input": "tokens", "adapter_dim": 48},
                                  {"visual_site_embeddings": False}),
    ("t5-base", "vl-adapter"): ({"reduction_factor": 16, "task_layer_norms": False},),
}


def paper_table() -> str:
    """Markdown: the papers' trained-per-task and total multiple beside ours, counted on built modules."""
    lines = [
        "| model | method | paper trained/task | ours | ratio | paper total | ours |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (model, method), (pct, multiple) in PAPER.items():
        for options in ({}, *VARIANTS.get((model, method), ())):
            ours = count_parameters(model, {"name": method, **options}, 8)
            label = " ".join([method, *(f"{key}={value}" for key, value in options.items())])
            per_task = ours["trained_per_task_pct"]
            lines.append(
                f"| {model} | {label} | {pct:.2f}% | {per_task:.3f}% | "
                f"{per_task / pct:.3f} | {multiple:.2f}x | {ours['total_multiple']:.3f}x |"
            )
    lines += [
        "",
        f"V&L (HyperPELT Table 2): trained parameters of the {VL_TASKS}-task model, % of the backbone, "
        "2048-d image features.",
        "",
        "| model | method | paper trained | ours | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for (model, method), pct in PAPER_VL.items():
        for options in ({}, *VL_VARIANTS.get((model, method), ())):
            ours = count_parameters(model, {"name": method, **options}, VL_TASKS)
            label = " ".join([method, *(f"{key}={value}" for key, value in options.items())])
            lines.append(f"| {model} | {label} | {pct:.2f}% | {ours['trained_pct']:.2f}% | "
                         f"{ours['trained_pct'] / pct:.3f} |")
    return "\n".join(lines)
