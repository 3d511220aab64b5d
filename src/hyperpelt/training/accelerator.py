"""The run's ``Accelerator``: the processes a launcher started, and mixed precision (``train.precision``).

``train.precision`` no leaves mixed precision to the launcher: Accelerate reads ``accelerate launch
--mixed_precision`` from ACCELERATE_MIXED_PRECISION when it is given none, so ours is passed only when it
names one (bf16, fp16), and a launcher that names another is refused rather than overridden. fp16 scales
the loss (Accelerate's gradient scaler, which skips a step whose gradients overflow); Accelerate runs it
only on accelerators: on the CPU it would silently train in float32, so it is refused there.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs

from ..errors import UserError

LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"  # set by accelerate launch --mixed_precision


def make_accelerator(world: int, precision: str = "no") -> Accelerator:
    """The Accelerator of a run of ``world`` processes in mixed precision ``precision`` (train.precision)."""
    launcher = os.environ.get(LAUNCHER_PRECISION, "no").lower()
    if precision != "no" and launcher not in ("no", precision):
        raise UserError(f"train.precision is {precision} but the launcher asks for mixed precision "
                        f"{launcher} (accelerate launch --mixed_precision): give one of them")
    _fresh_state(launcher if precision == "no" else precision)
    # A one-task batch leaves the other tasks' heads (separate modules) without gradient in that step.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    # without a GPU, Accelerate joins the processes torchrun starts only when told to use the CPU
    accelerator = Accelerator(log_with=None, kwargs_handlers=handlers,
                              mixed_precision=None if precision == "no" else precision,
                              cpu=world > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise UserError(f"{world} processes were launched (WORLD_SIZE) but Accelerate joined "
                        f"{accelerator.num_processes}: check the launcher (accelerate launch, torchrun)")
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError("mixed precision fp16 (train.precision or accelerate launch --mixed_precision) needs "
                        "a GPU: on the CPU Accelerate runs it without autocast or gradient scaler, in "
                        "float32; use bf16 on the CPU")
    return accelerator


def _fresh_state(precision: str) -> None:
    """Accelerate keeps one state per process, its mixed precision fixed once set: a run after one in
    another precision in this process (tests, sweeps) starts it afresh; the processes stay joined."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()
