"""Prompt tuning (Lester et al.): N trained soft tokens per task before the input embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from .base import Method


@dataclass
class PromptConfig:
    prompt_length: int = 49
    """N soft tokens per task (HyperPELT compares it with the same N×d_τ as its task embedding)."""
    init_vocab: int = 5000
    """Initialise the prompts from embeddings of tokens drawn among the first ids (Lester et al.)."""
    train_layer_norms: bool = False

    def __post_init__(self):
        if self.prompt_length < 1:
            raise UserError("method.prompt_length must be >= 1")


class PromptTuning(Method):
    changes_inputs = True

    def __init__(self, config: PromptConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        self.prompts = nn.Parameter(torch.randn(num_tasks, config.prompt_length, dims.d_model) * 0.5)

    def init_from_host(self, host) -> None:
        """Each soft token starts as the embedding of a token drawn among the first ``init_vocab`` ids."""
        embeddings = host.get_input_embeddings().weight
        if embeddings.is_meta or self.prompts.is_meta:
            return
        ids = torch.randint(0, min(self.config.init_vocab, embeddings.shape[0]), self.prompts.shape[:2])
        with torch.no_grad():
            self.prompts.copy_(embeddings[ids])

    def prepare_inputs(self, host, inputs: dict, state) -> dict:
        ids = inputs["input_ids"]
        return prepend_embeddings(host, inputs, self.prompts[state.task_ids_for(len(ids))])


def prepend_embeddings(host, inputs: dict, leading: torch.Tensor) -> dict:
    """The inputs with ``leading`` [B, n, d_model] embeddings placed before the token embeddings (the
    attention mask and token types widened to match); the host then reads ``inputs_embeds``."""
    inputs = dict(inputs)
    embeds = inputs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = host.get_input_embeddings()(inputs.pop("input_ids"))
    leading = leading.to(embeds.dtype)
    n = leading.shape[1]
    inputs["inputs_embeds"] = torch.cat([leading, embeds], dim=1)
    if inputs.get("attention_mask") is not None:
        mask = inputs["attention_mask"]
        inputs["attention_mask"] = torch.cat([mask.new_ones(len(mask), n), mask], dim=1)
    if inputs.get("token_type_ids") is not None:
        types = inputs["token_type_ids"]
        inputs["token_type_ids"] = torch.cat([types.new_zeros(len(types), n), types], dim=1)
    return inputs
