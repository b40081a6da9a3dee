"""Known upstream deprecation warnings, shown once per run rather than at every step or save.

Python's own ``"once"`` filter does not hold over a training run: its registry is cleared whenever the warning
filters change, which transformers does around every checkpoint save (``warnings.catch_warnings``).  So
:func:`show_once` wraps ``warnings.showwarning`` and drops the repeats of the messages it knows.
"""

from __future__ import annotations

import re
import warnings

__all__ = ["LIBRARY_DEPRECATIONS", "show_once"]

# transformers 5.x: TRL reads `is_gradient_checkpointing` at every generation; TrainingArguments' aliases warn at
# every copy of the arguments (each save).
LIBRARY_DEPRECATIONS = r"`(is_)?gradient_checkpointing(_kwargs)?` is deprecated"


def show_once(pattern: str = LIBRARY_DEPRECATIONS) -> None:
    """From now on, each distinct warning message matching ``pattern`` is shown once in this process."""
    show = warnings.showwarning
    if getattr(show, "shows_once", None) == pattern:
        return
    regex, seen = re.compile(pattern), set()

    def showwarning(message, category, *args, **kwargs):
        text = str(message)
        if regex.search(text):
            if text in seen:
                return
            seen.add(text)
        show(message, category, *args, **kwargs)

    showwarning.shows_once = pattern
    warnings.showwarning = showwarning
