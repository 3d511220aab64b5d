"""Tuning methods, each a config dataclass plus a module, registered by name."""

from .adapters import Adapters, AdaptersConfig, AdaptersSharedConfig
from .full import FullConfig, FullFineTuning
from .hyperformer import Hyperformer, HyperformerConfig, HyperformerPlusPlusConfig
from .hyperpelt import HyperPELT, HyperPELTConfig
from .prefix import MAMAdapter, MAMConfig, PrefixConfig, PrefixTuning
from .prompt import PromptConfig, PromptTuning
from .registry import get_method, method_config, method_names, register_method

register_method("full", FullConfig, FullFineTuning)
register_method("adapters", AdaptersConfig, Adapters)
register_method("adapters-shared", AdaptersSharedConfig, Adapters)
register_method("hyperformer", HyperformerConfig, Hyperformer)
register_method("hyperformer++", HyperformerPlusPlusConfig, Hyperformer)
register_method("prefix", PrefixConfig, PrefixTuning)
register_method("mam", MAMConfig, MAMAdapter)
register_method("prompt", PromptConfig, PromptTuning)
register_method("hyperpelt", HyperPELTConfig, HyperPELT)

__all__ = ["get_method", "method_config", "method_names", "register_method"]
