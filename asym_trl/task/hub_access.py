"""Whether a model or dataset can come from the Hugging Face Hub here, asked before anything is fetched.

Unasked, an unreachable Hub costs half a minute of retries (``huggingface_hub``, ``datasets``) and ends in a
traceback. :func:`hub_problem` answers at once instead, in one sentence that names the model or dataset, says why and
names the fix:

- ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) set: nothing is asked of the network; a model whose config is
  not in the local Hub cache is a problem (a dataset is left to ``datasets``, whose own cache may hold it);
- otherwise the Hub endpoint (``HF_ENDPOINT``, default https://huggingface.co) is probed once per process, with
  :data:`PROBE_TIMEOUT_S`: any HTTP answer means reachable; no answer is a problem naming ``HF_HUB_OFFLINE=1``.

:func:`looks_local` tells a local path from a Hub id (``org/name``) without touching either.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["PROBE_TIMEOUT_S", "hub_offline", "hub_problem", "hub_unreachable", "looks_local"]

PROBE_TIMEOUT_S = 3.0  # one try: a reachable Hub answers a HEAD in well under a second


def looks_local(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a Hub id (`org/name`)."""
    head = name.split("/")[0]
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or (head != name and Path(head).is_dir())


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, read now (a recipe's ``env:`` may set it after the import of
    ``huggingface_hub``) or as ``huggingface_hub`` read it."""
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or any(os.environ.get(n, "").upper() in ("1", "ON", "YES", "TRUE") for n in names)


@functools.cache
def hub_unreachable(endpoint: str) -> str | None:
    """Why ``endpoint`` gave no HTTP answer within :data:`PROBE_TIMEOUT_S` (one try, cached); None if it answered."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # whatever the HTTP client raises (DNS, refused, timeout, TLS): no answer
        return f"{type(e).__name__}: {' '.join(str(e).split()) or 'no answer'}"
    return None  # any status code is an answer


def hub_problem(what: str, repo_id: str, *, repo_type: str = "model", alternative: str = "a local copy") -> str | None:
    """Why ``repo_id`` cannot come from the Hub here (one sentence starting with ``what``), or None if it can.

    ``alternative`` names what the user can give instead (``"a local model directory"``, ``"dataset_data_files"``).
    """
    from huggingface_hub import constants, try_to_load_from_cache

    kind = "dataset" if repo_type == "dataset" else "model"
    download = f"hf download {repo_id}{' --repo-type dataset' if kind == 'dataset' else ''}"
    cached = kind == "model" and isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if hub_offline():
        if kind == "dataset" or cached:
            return None
        return (
            f"{what}: HF_HUB_OFFLINE is set and {repo_id} is not in the local Hub cache ({constants.HF_HUB_CACHE}): "
            f"download it where the Hub is reachable ({download}), or give {alternative}"
        )
    reason = hub_unreachable(constants.ENDPOINT)
    if reason is None:
        return None
    only_cached = "with it, only models and datasets in the local cache are used"
    if cached:
        fix = f"set HF_HUB_OFFLINE=1 to use its copy in the local Hub cache ({only_cached})"
    elif kind == "model":
        fix = f"give {alternative}, or {download} where the Hub is reachable and set HF_HUB_OFFLINE=1 ({only_cached})"
    else:
        fix = f"give {alternative}, or set HF_HUB_OFFLINE=1 to use a copy in the local cache ({only_cached})"
    return f"{what}: the Hugging Face Hub ({constants.ENDPOINT}) is unreachable from here ({reason}); {fix}"
