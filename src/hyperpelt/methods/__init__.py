"""Tuning methods, each a config dataclass plus a module, registered by name."""

from .full import FullConfig, FullFineTuning
from .hyperpelt import HyperPELT, HyperPELTConfig
from .registry import get_method, method_config, method_names, register_method

register_method("full", FullConfig, FullFineTuning)
register_method("hyperpelt", HyperPELTConfig, HyperPELT)

__all__ = ["get_method", "method_config", "method_names", "register_method", "HyperPELT", "HyperPELTConfig"]
