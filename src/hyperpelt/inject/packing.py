"""Sequences laid end to end in one row, so that no compute goes to padding.

A mixed batch of short and long texts padded to its longest text spends most of its matmuls on padding.
Packed, the host reads one row [1, T] of the batch's T real tokens: its linear layers, adapters and layer
norms work token by token as usual; attention alone needs the sequences apart, so it unpacks the row into
padded sequences [S, L, ...], attends within each sequence (and its prefix), and packs the output back.
Where the batch's lengths differ much, attention does this per group of sequences of similar length.

Not a CPU or float32 fast path: every tensor made here takes the device (and, unpacked, the dtype) of the
one it lays out, so a host on any device and in any compute dtype reads packed rows the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch


@dataclass
class Packing:
    """Where each of S sequences lies in the packed row of T tokens.

    ``mask`` [S, L]: the positions of each padded sequence that hold tokens (its first ``length``), in
    the row's order; ``sequence_rows`` [S]: each sequence's weight row (None: one row serves all);
    ``token_task_ids`` [T]: each token's task; ``segments``: (start, end, row) runs of tokens sharing a
    weight row, for adapters; ``order``: the row's sequences as positions in the caller's order;
    ``groups``: (start, end, packing) of the groups attention unpacks one at a time; ``position_bias``: a
    group's relative position bias at its padded width (T5), made once by the first layer that has one.
    """

    mask: torch.Tensor
    sequence_rows: torch.Tensor | None
    token_task_ids: torch.Tensor
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    order: torch.Tensor | None = None
    groups: list[tuple[int, int, Packing]] = field(default_factory=list)
    position_bias: torch.Tensor | None = None

    @classmethod
    def of(cls, mask: torch.Tensor, rows: torch.Tensor | None, task_ids: torch.Tensor) -> Packing:
        """The packing of right-padded sequences (``mask`` [S, L]) with their rows (or None) and tasks:
        split into a short and a long group where that saves attention much padding, and ordered by row
        within each group, so that adapters meet few runs of rows."""
        lengths = mask.sum(1)
        long = _long_sequences(lengths)
        key = task_ids if rows is None else rows
        order = torch.argsort(long.long() * (int(key.max()) + 1) + key, stable=True)
        packing = cls._laid_out(mask[order], None if rows is None else rows[order], task_ids[order])
        packing.order = order
        short = int((~long).sum())
        if 0 < short < len(order):
            split = int(lengths[order[:short]].sum())
            packing.groups = [(0, split, packing._part(0, short)), (split, int(lengths.sum()),
                                                                    packing._part(short, len(order)))]
        else:
            packing.groups = [(0, int(lengths.sum()), packing._part(0, len(order)))]
        return packing

    @classmethod
    def _laid_out(cls, mask: torch.Tensor, rows: torch.Tensor | None, task_ids: torch.Tensor) -> Packing:
        lengths = mask.sum(1)
        segments = []
        if rows is not None:
            kept, counts = torch.unique_consecutive(rows, return_counts=True)
            ends = torch.cumsum(lengths, 0)[torch.cumsum(counts, 0) - 1].tolist()
            segments = list(zip([0, *ends[:-1]], ends, kept.tolist()))
        return cls(mask, rows, task_ids.repeat_interleave(lengths), segments)

    def _part(self, first: int, end: int) -> Packing:
        """Sequences first..end-1 alone, padded to their own longest."""
        mask = self.mask[first:end]
        mask = mask[:, :int(mask.sum(1).max())]
        rows = None if self.sequence_rows is None else self.sequence_rows[first:end]
        return Packing(mask, rows, self.token_task_ids.new_empty(0))

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[S, L, ...] (in the caller's order) -> [1, T, ...]: the tokens of every sequence."""
        if self.order is not None:
            padded = padded[self.order]
        return padded[:, :self.mask.shape[1]][self.mask].unsqueeze(0)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[1, T, ...] -> [S, L, ...] (in the caller's order), zeros at padding."""
        out = packed.new_zeros(self.mask.shape + packed.shape[2:])
        out[self.mask] = packed[0]
        if self.order is None:
            return out
        restored = torch.empty_like(out)
        restored[self.order] = out
        return restored


def _long_sequences(lengths: torch.Tensor) -> torch.Tensor:
    """Which sequences go to the long group: attention over padded sequences costs about sequences x
    longest², so the split by length that most lowers that, where it saves at least a quarter."""
    n = len(lengths)
    if n < 2:
        return torch.zeros_like(lengths, dtype=torch.bool)
    ordered, _ = torch.sort(lengths)
    cut = torch.arange(1, n, device=lengths.device)  # the short group: the first `cut` sequences
    cost = cut * ordered[cut - 1] ** 2 + (n - cut) * ordered[-1] ** 2
    if int(cost.min()) > 0.75 * n * int(ordered[-1]) ** 2:
        return torch.zeros_like(lengths, dtype=torch.bool)
    return lengths > ordered[int(cut[cost.argmin()]) - 1]


_CURRENT: ContextVar[Packing | None] = ContextVar("hyperpelt_packing", default=None)


def current_packing() -> Packing | None:
    """The packing of the row the host is reading in this thread, or None (a padded batch)."""
    return _CURRENT.get()


@contextmanager
def packed(packing: Packing) -> Iterator[Packing]:
    """The host reads rows packed as ``packing`` says while this lasts (in this thread)."""
    token = _CURRENT.set(packing)
    try:
        yield packing
    finally:
        _CURRENT.reset(token)
