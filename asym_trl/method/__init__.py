"""The paper's method as math: what a rollout's advantage is, and which rollouts count as successes.

- ``advantages``: the estimators as pure, vectorised torch functions, each citing its equation (Eq. 10, the presets,
  the flipped curves of App. D, Pass@K, Dr.GRPO, A-GRAE, the entropy-shaped token advantage);
- ``estimators``: the registry that names them with their metadata (betas, scales, defaults, presets);
- ``success``: the success rule (threshold, deciding reward function) and the zero-signal watch;
- ``args``: the method's config fields and their checks, shared by both trainers' configs;
- ``adaptive``: the entropy-targeted controller that moves (beta_pos, beta_neg) during training.

May import: torch, ``asym_trl.errors``, ``asym_trl.trl_compat`` and the task (``asym_trl.task``: the reward
registry's names). Never the trainers, the config or anything about a run (docs/architecture.md).
"""
