"""Quiet third-party libraries for the command line: their errors still raise, their chatter stays out."""

from __future__ import annotations


def quiet_libraries() -> None:
    """No load reports, weight-loading bars, advisory warnings or hub retry notices."""
    import datasets
    import huggingface_hub
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for library in (datasets, huggingface_hub):  # no retry notices when the hub cannot be reached
        library.utils.logging.set_verbosity_error()
