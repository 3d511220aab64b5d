"""VL-HyperPELT (Zhang et al., §3.3): the image, too, conditions the hypernetwork.

A trainable visual mapping takes each image's grid of G feature vectors to z_v ∈ R^{G×d_τ}; a visual
projector (two linear layers with a ReLU, like the task projector) gives the visual hyper-embedding I_v;
visual hypernetworks h_P^v and h_A^v map I_v to prefix keys and values and to adapter weights, as the task
ones map I_τ. The visual weights differ per example; they act beside the task weights (generated per task,
or read from the weight table at inference) through the state's per-example weights.

The paper leaves open how they combine; each choice is an option (docs/methods.md gives the counts):
- ``visual_site_embeddings``: I_v = MLP_v([z_v, l_layer, b_block]) as I_τ is built (§3.2), so each site
  gets its own visual weights; false: I_v = MLP_v(z_v), the same visual weights at every site.
- ``visual_norm``: a layer norm on z_v, so the image reaches the projector on the scale of the layer and
  block embeddings it is added to (std 1), or z_v as mapped.
- ``prefix_merge``: visual prefix rows after the task prefix (concat: N + G keys per attention block), or
  added to it (sum: needs G = N).
- ``adapter_merge``: a second, visual adapter beside the task adapter (separate, its own λ_v), or one
  adapter whose weights are the task and visual weights summed (sum).
- ``visual_input``: the grid also enters the encoder as input tokens, as in VL-Adapter (tokens), or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..inject import ConditioningState
from . import generator
from .hyperpelt import HyperPELT, HyperPELTConfig
from .visual_tokens import VisualTokens, batch_images, prepend_visual_tokens


@dataclass
class VLHyperPELTConfig(HyperPELTConfig):
    feature_dim: int = 2048
    """Size of each image feature vector (the paper's CLIP RN101 grid: 2048; efficientnet-lite0: 1280)."""
    visual_prefix: bool = True
    """Visual prefixes from h_P^v in every attention block."""
    visual_adapter: bool = True
    """Visual adapter weights from h_A^v beside every feed-forward block."""
    visual_site_embeddings: bool = True
    """The visual projector reads [z_v, l_layer, b_block] (as I_τ); false: z_v alone."""
    prefix_merge: Literal["concat", "sum"] = "concat"
    """Visual prefix rows after the task prefix rows (concat), or added to them (sum; grid = N)."""
    adapter_merge: Literal["separate", "sum"] = "separate"
    """A visual adapter beside the task adapter (separate), or one adapter with summed weights (sum)."""
    visual_norm: bool = True
    """A layer norm on z_v, putting the mapped grid on the scale of the task, layer and block embeddings."""
    visual_input: Literal["none", "tokens"] = "none"
    """Also place the projected grid before the input tokens (tokens, as VL-Adapter), or not (none)."""

    def __post_init__(self):
        super().__post_init__()
        if self.feature_dim < 1:
            raise UserError("method.feature_dim must be >= 1")


class VLHyperPELT(HyperPELT):
    changes_inputs = weights_per_example = True  # with its visual parts on (see packs_sequences)

    def __init__(self, config: VLHyperPELTConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)  # the text-only modules first
        c, d_tau = config, config.task_dim or dims.d_model
        self.visual_prefix = c.visual_prefix and bool(self.attention_sites)
        self.visual_adapter = c.visual_adapter and bool(self.ffn_sites)
        if self.visual_prefix or self.visual_adapter:
            self.visual_mapping = nn.Linear(c.feature_dim, d_tau)
            self.visual_norm = nn.LayerNorm(d_tau) if c.visual_norm else nn.Identity()
            width = 3 * d_tau if c.visual_site_embeddings else d_tau
            self.visual_projector_in, self.visual_projector_out = generator.projector(
                width, c.projector_hidden, c.hyper_dim)
        if self.visual_prefix:
            self.visual_prefix_key, self.visual_prefix_value = generator.prefix_generators(
                c.hyper_dim, dims.inner_dim)
        if self.visual_adapter:
            self.visual_adapter_down, self.visual_adapter_up = generator.adapter_generators(
                c.hyper_dim, dims.d_model, c.adapter_dim)
            self.visual_adapter_scale = nn.Parameter(torch.ones(len(self.ffn_sites)))
        if c.visual_input == "tokens":
            self.visual_tokens = VisualTokens(c.feature_dim, dims.d_model)

    @property
    def reads_images(self) -> bool:
        return self.visual_prefix or self.visual_adapter or self.config.visual_input == "tokens"

    @property
    def packs_sequences(self) -> bool:
        """With its visual parts off it is HyperPELT, and packs as HyperPELT does."""
        return not self.reads_images

    def visual_hidden(self, features: torch.Tensor, layers: torch.Tensor, blocks: torch.Tensor):
        """The visual projector's hidden layer for every (example, site): [B, sites, G, hidden] (sites
        broadcast as 1 without site embeddings). With them it reads [z_v, l, b] as the task projector reads
        [z_τ, l, b]."""
        mapped = self.visual_mapping(features.to(self.visual_mapping.weight.dtype))
        z = self.visual_norm(mapped)  # [B, G, d_τ]
        if not self.config.visual_site_embeddings:
            return F.relu(self.visual_projector_in(z))[:, None]
        layer_rows = self.layer_embedding[layers]
        if layer_rows.dim() == 3 and layer_rows.shape[1] != z.shape[1]:
            raise UserError(
                f"method vl-hyperpelt: the image grid has {z.shape[1]} cells but the layer and block "
                f"embeddings have prefix_length = {layer_rows.shape[1]} rows; set method.prefix_length to "
                f"{z.shape[1]}, or layer_block_embeddings: vectors, or visual_site_embeddings: false")
        return generator.site_hidden(self.visual_projector_in, z, layer_rows, self.block_embedding[blocks])

    def condition_examples(self, state: ConditioningState) -> None:
        if not (self.visual_prefix or self.visual_adapter):
            return
        features = batch_images(state, self.name)
        state.prefix_merge, state.adapter_merge = self.config.prefix_merge, self.config.adapter_merge
        if self.visual_prefix:
            hidden = self.visual_hidden(features, self.attention_layers, self.attention_blocks)
            hyper = self.visual_projector_out(hidden).expand(-1, len(self.attention_sites), -1, -1)
            if self.config.prefix_merge == "sum" and hyper.shape[2] != self.config.prefix_length:
                raise UserError(f"method vl-hyperpelt: prefix_merge sum needs the image grid "
                                f"({hyper.shape[2]} cells) to equal prefix_length "
                                f"({self.config.prefix_length})")
            state.example_prefix = generator.prefix_weights(self.visual_prefix_key, self.visual_prefix_value,
                                                            hyper)
        if self.visual_adapter:
            hidden = self.visual_hidden(features, self.ffn_layers, self.ffn_blocks).mean(dim=2)
            hyper = self.visual_projector_out(hidden).expand(-1, len(self.ffn_sites), -1)  # [B, S, d_I]
            state.example_adapters["ffn"] = generator.adapter_weights(
                self.visual_adapter_down, self.visual_adapter_up, self.visual_adapter_scale, hyper,
                self.dims.d_model, self.config.adapter_dim, self.config.adapter_activation)

    def prepare_inputs(self, host, inputs: dict, state) -> dict:
        if self.config.visual_input != "tokens":
            return inputs
        return prepend_visual_tokens(self.visual_tokens, self.name, host, inputs, state)
