"""The research code's way of generating weights, kept for comparison in the benchmark and its tests."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def regenerating_every_forward(model, task_ids):
    """The hypernetwork runs again at every forward of the host, i.e. at every decoding step of
    ``generate``, as the papers' research code did."""
    handle = model.host.register_forward_pre_hook(lambda *_: model.method.condition(task_ids, model.state))
    try:
        with model.conditioned(task_ids):
            yield
    finally:
        handle.remove()
