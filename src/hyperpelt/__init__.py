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
    "load_run": ".inference",
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
    # re-exports for type checkers (the "X as X" form marks them public); at run time __getattr__ loads them
    from .checkpoint import load_checkpoint as load_checkpoint
    from .checkpoint import save_checkpoint as save_checkpoint
    from .config import RunConfig as RunConfig
    from .config import load_config as load_config
    from .inference import load_run as load_run
    from .model import TunedModel as TunedModel
    from .tasks import get_task as get_task
    from .tasks import load_task_splits as load_task_splits
    from .tasks import task_names as task_names
    from .training.trainer import train as train
