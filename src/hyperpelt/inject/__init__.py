"""Injection into a Hugging Face model without touching its modeling file.

Prefixes reach attention through a registered attention function (``attention.py``); adapters reach
the feed-forward blocks through thin wrappers that keep the host module as ``base_layer``
(``adapters.py``). Both read the weights generated for the current step from one ``ConditioningState``
(``state.py``) set once per forward, never from extra arguments threaded through the host.
"""

from .adapters import (
                       ACTIVATIONS,
                       Activation,
                       ParallelAdapter,
                       ParallelResidualAdapter,
                       SequentialAdapter,
                       TaskLayerNorm,
                       adapter_delta,
                       replace_module,
                       wrap_parallel_adapters,
)
from .attention import (
                       ATTN_IMPLEMENTATION,
                       PrefixSlot,
                       attach_prefixes,
                       attention_implementation,
                       set_attention_implementation,
                       use_prefix_attention,
)
from .state import AdapterWeights, ConditioningState, PrefixWeights, select_rows

__all__ = ["ACTIVATIONS", "ATTN_IMPLEMENTATION", "Activation", "AdapterWeights", "ConditioningState",
           "ParallelAdapter", "ParallelResidualAdapter", "PrefixSlot", "PrefixWeights", "SequentialAdapter",
           "TaskLayerNorm", "adapter_delta", "attach_prefixes", "attention_implementation", "replace_module",
           "select_rows", "set_attention_implementation", "use_prefix_attention", "wrap_parallel_adapters"]
