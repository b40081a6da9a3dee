"""The life of a run: how it stops, checkpoints, fails and speaks.

- ``graceful_stop``: a stop signal ends training at the next exact resume point, with a checkpoint;
- ``checkpoints``: checkpoints published complete, the crash checkpoint, the newest complete checkpoint;
- ``distributed``: a bounded wait for a lost peer and an error that names it (CPU process groups too);
- ``reward_guard``: reward functions checked, and allowed to fail for flaky graders;
- ``quiet_logs``: known upstream deprecations shown once per run.

May import: ``asym_trl.errors``, ``asym_trl.trl_compat`` and the layers below (``method``, ``task``, ``generation``);
never the trainers, the config, or ``rollouts`` / ``diagnostics``.
"""
