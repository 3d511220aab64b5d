"""The slow reference path, against which tests check every fast path (tests/inject/test_reference_path.py).

While ``reference_path_on()`` lasts (``TunedModel.reference()``), in this thread, each fast path steps aside
where it decides, by asking ``reference_path()``: inference generates the method's weights for the batch
(no weight table); encoders read padded batches (nothing packed); every injected site has the method
regenerate the batch's weights at each layer call, and indexes its own slice of them (no rows kept once
per batch, no split of all sites' weights, no prefix joined once to a decoder's cached keys); adapters run
batched matmuls even where one row serves the batch; linear layers compute few rows as x @ Wᵀ. Slow, and
meant for tiny models: what it computes is what the fast paths must give, within float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_REFERENCE: ContextVar[bool] = ContextVar("hyperpelt_reference", default=False)


def reference_path() -> bool:
    """Whether the slow reference path runs in this thread."""
    return _REFERENCE.get()


@contextmanager
def reference_path_on() -> Iterator[None]:
    """The slow reference path in this thread while this lasts."""
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)
