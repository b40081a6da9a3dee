"""Between scoring and the loss: what happens to a scored batch of rollouts before its micro-batches are trained.

- ``rows``: row-wise operations on TRL's batch dicts (one row per rollout);
- ``zero_signal``: rollouts whose gradient is exactly zero are left out of the loss forward/backward;
- ``dynamic_sampling``: zero-signal groups replaced by informative ones generated again (DAPO).

Each part is handed what it uses by the trainer. May import: torch, ``asym_trl.trl_compat``, ``asym_trl.errors`` and
the layers below (``method``, ``task``, ``generation``); never the trainers, the config, or the other parts of its
layer (``diagnostics``, ``lifecycle``).
"""
