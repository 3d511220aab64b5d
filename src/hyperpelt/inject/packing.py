"""Sequences laid end to end in one row, so that no compute goes to padding.

A mixed batch of short and long texts padded to its longest text spends most of its matmuls on padding.
Packed, the host reads one row [1, T] of the batch's T real tokens: its linear layers, adapters and layer
norms work token by token as usual; attention alone needs the sequences apart, so it unpacks the row into
padded sequences [S, L, ...], attends within each sequence (and its prefix), and packs the output back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where each of S sequences lies in the packed row of T tokens.

    ``mask`` [S, L]: the positions of each padded sequence that hold tokens (its first ``length``);
    ``sequence_rows`` [S]: each sequence's weight row (None: one row serves all); ``token_task_ids`` [T]:
    each token's task; ``segments``: (start, end, row) runs of tokens sharing a weight row, for adapters.
    """

    mask: torch.Tensor
    sequence_rows: torch.Tensor | None
    token_task_ids: torch.Tensor
    segments: list[tuple[int, int, torch.Tensor]]

    @classmethod
    def of(cls, mask: torch.Tensor, rows: torch.Tensor | None, task_ids: torch.Tensor) -> Packing:
        """The packing of right-padded sequences (``mask`` [S, L]) with their rows (or None) and tasks."""
        lengths = mask.sum(1)
        token_task_ids = task_ids.repeat_interleave(lengths)
        segments = []
        if rows is not None:
            kept, counts = torch.unique_consecutive(rows, return_counts=True)
            ends = torch.cumsum(lengths, 0)[torch.cumsum(counts, 0) - 1].tolist()
            starts = [0, *ends[:-1]]
            segments = [(s, e, row.reshape(1)) for s, e, row in zip(starts, ends, kept)]
        return cls(mask, rows, token_task_ids, segments)

    @property
    def num_sequences(self) -> int:
        return self.mask.shape[0]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[S, L, ...] -> [1, T, ...]: the tokens of every sequence, in order."""
        return padded[self.mask].unsqueeze(0)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[1, T, ...] -> [S, L, ...], zeros at padding."""
        out = packed.new_zeros(self.mask.shape + packed.shape[2:])
        out[self.mask] = packed[0]
        return out


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
