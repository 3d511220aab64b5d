"""What encoder task heads read: pooled outputs, and for separately encoded pairs their comparison."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Encoded:
    """An encoder's output for a batch of texts: the pooled vectors, and the token states with a mask of
    the texts' own tokens (special tokens and padding left out)."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor

    def rows(self, rows: torch.Tensor) -> Encoded:
        return Encoded(self.pooled[rows], self.tokens[rows], self.token_mask[rows])


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` where ``mask`` is set (0 where nothing is)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """[B, L, d] -> [B, d]: the mean over attended positions or the first token; optionally scaled to
    length sqrt(d), so that entries stay of order 1, as sentence-embedding models normalise."""
    pooled = hidden[:, 0] if pooling == "first" else masked_mean(hidden, attention_mask.unsqueeze(-1), dim=1)
    return F.normalize(pooled, dim=-1) * pooled.shape[-1] ** 0.5 if normalize else pooled


def pair_features(a: Encoded, b: Encoded) -> torch.Tensor:
    u, v = a.pooled, b.pooled
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def pair_cosine(a: Encoded, b: Encoded) -> torch.Tensor:
    return F.cosine_similarity(a.pooled, b.pooled, dim=-1).unsqueeze(-1)


def pair_alignment(a: Encoded, b: Encoded) -> torch.Tensor:
    """[cos(u, v), precision, recall]: the sentence cosine and BERTScore's greedy token matching (Zhang et
    al., 2020). Precision averages, over the tokens of b, the cosine to their most similar token of a;
    recall the converse. Whether a premise (a) covers its hypothesis (b) shows in precision, not in a
    symmetric sentence cosine."""
    similarity = F.normalize(b.tokens, dim=-1) @ F.normalize(a.tokens, dim=-1).transpose(1, 2)  # [B, Lb, La]
    below_any_cosine = -2.0
    best_in_a = similarity.masked_fill(~a.token_mask[:, None, :], below_any_cosine).amax(dim=2)
    best_in_b = similarity.masked_fill(~b.token_mask[:, :, None], below_any_cosine).amax(dim=1)
    precision, recall = masked_mean(best_in_a, b.token_mask), masked_mean(best_in_b, a.token_mask)
    return torch.cat([pair_cosine(a, b), precision[:, None], recall[:, None]], dim=-1)


# name -> (function of the two texts' encodings, its width given d_model)
PAIR_READERS = {
    "features": (pair_features, lambda d: 4 * d),
    "cosine": (pair_cosine, lambda d: 1),
    "alignment": (pair_alignment, lambda d: 3),
}
