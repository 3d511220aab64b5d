"""The weights generated for the current step, shared by every injected site of the host."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .packing import current_packing
from .reference import reference_path


class _PerSite:
    """Generated weights whose ``row_fields`` are [rows, sites, ...] tensors.

    Each site's slice of them is split once per step with ``unbind``: indexing the whole tensor at every
    site would give each site's backward a zero-filled gradient the size of all sites, summed over
    sites: quadratic in the number of sites, and growing with the number
    of tasks in a batch. ``unbind`` hands all sites' gradients back in one stack.
    """

    def site(self, name: str, index: int) -> torch.Tensor | None:
        tensor = getattr(self, name)
        if tensor is None:
            return None
        if reference_path():
            return tensor[:, index]
        split = self.__dict__.setdefault("_split", {})
        if name not in split:
            split[name] = tensor.unbind(1)
        return split[name][index]

    def row_tensor(self) -> torch.Tensor:
        return getattr(self, self.row_fields[0])

    def cast(self, dtype: torch.dtype):
        """A copy with its tensors (and a per-site scale) in ``dtype``; itself where they are already."""
        fields = [*self.row_fields, "scale"] if hasattr(self, "scale") else self.row_fields
        tensors = {name: getattr(self, name) for name in fields}
        cast = {name: tensor.to(dtype) for name, tensor in tensors.items()
                if isinstance(tensor, torch.Tensor) and tensor.dtype != dtype}
        return dataclasses.replace(self, **cast) if cast else self

    def task_rows(self, index: slice | None):
        """A copy holding only rows ``index`` of the row tensors (views: no data is copied); None keeps
        all."""
        if index is None or self.shared:
            return dataclasses.replace(self)
        rows = {name: getattr(self, name) for name in self.row_fields if getattr(self, name) is not None}
        return dataclasses.replace(self, **{name: tensor[index] for name, tensor in rows.items()})


@dataclass
class PrefixWeights(_PerSite):
    """Prefix keys and values of every attention site: [rows, sites, N, inner_dim]."""

    keys: torch.Tensor
    values: torch.Tensor
    shared: bool = False  # one row serves every example
    row_fields = ("keys", "values")


@dataclass
class AdapterWeights(_PerSite):
    """Bottleneck adapters of a group of sites: down [rows, sites, m, d], up [rows, sites, d, m].

    Optional biases, a layer norm on the adapter output (Hyperformer's, possibly generated per task),
    and a scale λ per site or for all.
    """

    down: torch.Tensor
    up: torch.Tensor
    down_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    norm_weight: torch.Tensor | None = None
    norm_bias: torch.Tensor | None = None
    scale: torch.Tensor | float = 1.0
    activation: str = "relu"
    shared: bool = False
    row_fields = ("down", "up", "down_bias", "up_bias", "norm_weight", "norm_bias")


@dataclass
class ConditioningState:
    """The weights generated for the batch being processed, shared by every injected site.

    ``rows`` maps each example to a row of the generated tensors (None: one row serves the batch);
    ``task_ids`` are the examples' tasks, for modules holding per-task tables.

    ``example_prefix`` and ``example_adapters`` hold weights generated for each example (row i: example i,
    e.g. from its image), acting beside the task weights: prefixes concatenated after the task prefix or
    summed with it (``prefix_merge``), adapters as a second adapter or summed into the task adapter's
    weights (``adapter_merge``).
    """

    enabled: bool = True
    task_ids: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    prefix: PrefixWeights | None = None
    adapters: dict[str, AdapterWeights] = field(default_factory=dict)
    image_features: torch.Tensor | None = None  # [B, grid, dim] of the batch's images, for methods using them
    example_prefix: PrefixWeights | None = None
    example_adapters: dict[str, AdapterWeights] = field(default_factory=dict)
    prefix_merge: Literal["concat", "sum"] = "concat"
    adapter_merge: Literal["separate", "sum"] = "separate"
    joined: dict = field(default_factory=dict)  # prefixes joined to a decoder's cached keys, per site
    selected: dict = field(default_factory=dict)  # the batch's prefix and adapter rows, per site, batch size
    regenerate: Callable[[], None] | None = None  # the reference path's: fill the state anew (``refresh``)

    def clear(self) -> None:
        self.task_ids = self.rows = self.prefix = self.image_features = self.example_prefix = None
        self.adapters, self.example_adapters, self.joined, self.selected = {}, {}, {}, {}
        self.regenerate = None

    def cast_weights(self, dtype: torch.dtype) -> None:
        """The batch's generated weights in ``dtype`` (a half-precision host's compute dtype), cast once for
        the batch, not at each layer call."""
        if self.prefix is not None:
            self.prefix = self.prefix.cast(dtype)
        if self.example_prefix is not None:
            self.example_prefix = self.example_prefix.cast(dtype)
        self.adapters = {group: w.cast(dtype) for group, w in self.adapters.items()}
        self.example_adapters = {group: w.cast(dtype) for group, w in self.example_adapters.items()}

    def refresh(self) -> None:
        """Every injected site calls this before it reads the state: on the reference path
        (``reference.py``) the method generates the batch's weights anew, at each layer call."""
        if self.regenerate is not None:
            self.regenerate()

    def once_per_batch(self, key: tuple, sources: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, kept in ``selected`` under ``key`` and reused while the same ``sources`` objects
        (weights, rows) hold: a decoder asks for its sites' rows at every step."""
        if reference_path():
            return make()
        kept = self.selected.get(key)
        if kept is None or any(a is not b for a, b in zip(kept[0], sources)):
            kept = self.selected[key] = (sources, make())
        return kept[1]

    def example_rows_for(self, batch_size: int, weights) -> torch.Tensor:
        """Row index per example into per-example weights (repeated when generation expands the batch)."""
        rows = weights.row_tensor()
        return _expand(torch.arange(rows.shape[0], device=rows.device), batch_size)

    def rows_for(self, batch_size: int, shared: bool = False) -> torch.Tensor | None:
        """Row index per example, repeated when generation expands the batch (beams, several samples); per
        sequence while the host reads a packed row."""
        if self.rows is None or shared:
            return None
        packing = current_packing()
        if packing is not None:
            return packing.sequence_rows
        return _expand(self.rows, batch_size)

    def task_ids_for(self, batch_size: int) -> torch.Tensor:
        return _expand(self.task_ids, batch_size)


def _expand(index: torch.Tensor, batch_size: int) -> torch.Tensor:
    return index if batch_size == len(index) else index.repeat_interleave(batch_size // len(index))


def select_rows(tensor: torch.Tensor, rows: torch.Tensor | slice | None) -> torch.Tensor:
    """[R, ...] -> [B, ...] by example rows (or a slice of rows: a view), or [1, ...] to broadcast when one
    row serves the batch."""
    return tensor[:1] if rows is None else tensor[rows]
