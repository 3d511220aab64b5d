"""Tuning methods, each a config dataclass plus a module, registered by name."""

from .adapters import Adapters, AdaptersConfig, AdaptersSharedConfig
from .base import Method
from .full import FullConfig, FullFineTuning
from .hyperformer import Hyperformer, HyperformerConfig, HyperformerPlusPlusConfig
from .hyperpelt import HyperPELT, HyperPELTConfig
from .prefix import MAMAdapter, MAMConfig, PrefixConfig, PrefixTuning
from .prompt import PromptConfig, PromptTuning
from .registry import (
    DEFAULT_METHOD,
    get_method,
    method_config,
    method_name,
    method_names,
    method_options,
    register_method,
)
from .static import StaticWeights
from .visual_tokens import ClipT5, ClipT5Config, VLAdapter, VLAdapterConfig
from .vl_hyperpelt import VLHyperPELT, VLHyperPELTConfig
from .weight_table import CacheStats, WeightTable

register_method("full", FullConfig, FullFineTuning)
register_method("adapters", AdaptersConfig, Adapters)
register_method("adapters-shared", AdaptersSharedConfig, Adapters)
register_method("hyperformer", HyperformerConfig, Hyperformer)
register_method("hyperformer++", HyperformerPlusPlusConfig, Hyperformer)
register_method("prefix", PrefixConfig, PrefixTuning)
register_method("mam", MAMConfig, MAMAdapter)
register_method("prompt", PromptConfig, PromptTuning)
register_method("hyperpelt", HyperPELTConfig, HyperPELT)
register_method("vl-hyperpelt", VLHyperPELTConfig, VLHyperPELT)
register_method("clip-t5", ClipT5Config, ClipT5)
register_method("vl-adapter", VLAdapterConfig, VLAdapter)

__all__ = ["DEFAULT_METHOD", "CacheStats", "Method", "StaticWeights", "WeightTable", "get_method",
           "method_config", "method_name", "method_names", "method_options", "register_method"]
