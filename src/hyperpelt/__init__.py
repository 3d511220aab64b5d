"""hyperpelt: hypernetwork-based parameter-efficient multi-task fine-tuning (HyperPELT).

The public API is imported lazily, so ``import hyperpelt`` stays cheap (no torch or transformers until
a name that needs them is used)::

    from hyperpelt import load_config, train, load_run, TunedModel
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import UserError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "TunedModel": ".model",
    "load_config": ".config",
    "RunConfig": ".config",
    "train": ".training.trainer",
    "load_run": ".training.run_dir",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "get_task": ".tasks",
    "task_names": ".tasks",
    "load_task_splits": ".tasks",
}

__all__ = [*_EXPORTS, "UserError", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hyperpelt' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import RunConfig, load_config
    from .model import TunedModel
    from .tasks import get_task, load_task_splits, task_names
    from .training.run_dir import load_run
    from .training.trainer import train
