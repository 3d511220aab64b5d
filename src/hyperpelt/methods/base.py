"""The interface every method implements."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import is_layer_norm
from ..backbones.base import Dims, Site
from ..inject import ConditioningState, TaskLayerNorm
from .registry import method_name


class Method(nn.Module):
    """A tuning method: modules it owns, where it injects them, and which host weights it trains.

    ``inject`` wraps host modules once; ``condition`` fills the shared state for one batch (the
    hypernetwork runs here, once per forward for all layers); the wrappers read that state. A new method
    is a config dataclass, a subclass of this, and one ``register_method`` call.
    """

    trains_backbone: bool = False
    generates_weights: bool = True
    """False for methods whose ``condition`` does not depend on the tasks' rows (inference uses it as is)."""
    reads_images: bool = False
    """True for methods that need each example's image features (``state.image_features``)."""
    changes_inputs: bool = False
    """True for methods whose ``prepare_inputs`` changes the host's inputs (prompt tuning, visual tokens)."""
    weights_per_example: bool = False
    """True for methods whose ``condition_examples`` gives weights that differ per example."""
    task_embedding_name: str | None = None
    """The parameter holding one embedding per task (a row of its first dimension) from which the method
    makes everything task-specific, or None: what few-shot transfer's ``taskembed`` mode trains for a new
    task, and what ``hyperpelt embed-plot`` draws."""

    def __init_subclass__(cls, **kwargs):
        """A method that defines ``prepare_inputs`` or ``condition_examples`` must declare the flag that
        says so: inference packs texts and exports static weights by the flags alone."""
        super().__init_subclass__(**kwargs)
        for hook, flag in (("prepare_inputs", "changes_inputs"),
                           ("condition_examples", "weights_per_example")):
            if hook in vars(cls) and not getattr(cls, flag):
                raise TypeError(f"{cls.__name__} defines {hook}: declare {flag} = True")

    def __init__(self, config, dims: Dims, sites: list[Site], num_tasks: int, block_types: tuple[str, ...]):
        super().__init__()
        self.config, self.dims, self.sites = config, dims, sites
        self.num_tasks, self.block_types = num_tasks, block_types
        self.name = method_name(config)
        self.weights_version = 0  # see weights_changed
        self.register_load_state_dict_post_hook(_weights_loaded)

    def weights_changed(self) -> None:
        """Say that the method's weights were written other than by an optimizer step (a load, an in-place
        edit): the inference table of every task's weights (``WeightTable``) is then made again."""
        self.weights_version += 1

    @property
    def trains_layer_norms(self) -> bool:
        return bool(getattr(self.config, "train_layer_norms", False))

    def set_trainable(self, host: nn.Module, backbone) -> None:
        """Train the method's modules, per-task layer norms, and host layer norms if the method trains them;
        freeze the rest of the host (unless the method trains the whole backbone)."""
        for p in host.parameters():
            p.requires_grad_(self.trains_backbone)
        per_task = [m for m in host.modules() if isinstance(m, TaskLayerNorm)]
        replaced = {id(m.base_layer) for m in per_task}
        if self.trains_layer_norms:
            for module in host.modules():
                if is_layer_norm(module, backbone) and id(module) not in replaced:
                    module.requires_grad_(True)
        for module in per_task:
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        self.requires_grad_(True)

    def inject(self, host: nn.Module, backbone, state: ConditioningState) -> None:
        """Wrap the host's sites (default: nothing)."""

    def init_from_host(self, host: nn.Module) -> None:
        """Initialise the method's weights from the host's (after ``inject``; default: nothing)."""

    def condition(self, task_ids: torch.Tensor, state: ConditioningState) -> None:
        """Fill ``state`` for a batch whose examples belong to ``task_ids`` (default: the ids only)."""
        self.batch_tasks(task_ids, state)

    def condition_embeddings(self, embeddings: torch.Tensor, state: ConditioningState) -> None:
        """Fill ``state``'s task weights (``prefix``, ``adapters``) with one row per row of ``embeddings``
        (each shaped as a row of the task embedding), leaving its task ids and rows alone: how a served task
        whose embedding is no row of the method's parameter gets its weights. Methods with a
        ``task_embedding_name`` implement it (``condition`` is then this on the batch's rows)."""
        raise NotImplementedError(f"method '{self.name}' has no task embedding to generate weights from")

    def condition_examples(self, state: ConditioningState) -> None:
        """Fill ``state``'s per-example weights (``example_prefix``, ``example_adapters``) for a batch, after
        ``condition`` or the weight table has given the task weights (default: none)."""

    def prepare_inputs(self, host: nn.Module, inputs: dict, state: ConditioningState) -> dict:
        """Change one sequence's model inputs (input_ids, attention_mask, ...) before the host sees them;
        ``state`` holds the batch's ``task_ids`` and ``image_features``."""
        return inputs

    @property
    def packs_sequences(self) -> bool:
        """Whether inference may pack a batch's texts into one row (``inject/packing.py``): the method
        changes no model inputs and generates nothing per example."""
        return not (self.changes_inputs or self.weights_per_example or self.reads_images)

    @staticmethod
    def batch_tasks(task_ids: torch.Tensor, state: ConditioningState) -> torch.Tensor:
        """Record the batch's task ids; returns its distinct tasks, each example's row indexing them."""
        tasks, rows = torch.unique(task_ids, return_inverse=True)
        state.task_ids = task_ids
        state.rows = None if len(tasks) == 1 else rows
        return tasks

    def sites_of(self, *roles: str) -> list[Site]:
        return [s for s in self.sites if s.role in roles]


def _weights_loaded(method: Method, incompatible_keys) -> None:
    method.weights_changed()
