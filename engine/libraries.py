"""diffusers and transformers made to follow the process's own settings.

Both libraries install a stderr handler of their own on their root logger (and stop propagation)
the first time they log, and draw tqdm bars while loading. A process that set up its logging
(``vidq api``/``worker``: one format, JSON or text) or turned progress bars off
(``HF_HUB_DISABLE_PROGRESS_BARS``, huggingface_hub's ``disable_progress_bars()``) would still get
their plain lines and bars. Called right after they are imported, before they load anything.
"""

from __future__ import annotations


def libraries_follow_the_process() -> None:
    import diffusers.utils.logging
    import transformers.utils.logging
    from huggingface_hub.utils import are_progress_bars_disabled

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_default_handler()  # records go up to the process's handlers instead
        library.enable_propagation()
        if are_progress_bars_disabled():  # diffusers never reads the hub's switch, transformers only at import
            library.disable_progress_bar()
