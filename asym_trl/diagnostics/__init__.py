"""Measuring a run: the paper's entropy-refinement diagnostics and what a study reads.

- ``measures``: the measurements as pure torch functions (§2.2, §3.1, App. B: group shares, Cov(p), entropy on
  correct / incorrect rollouts);
- ``groups``: ``GroupDiagnostics``, the callback that logs them during training;
- ``validation``: greedy in-training validation and the best checkpoint (App. E);
- ``exploration``: pass@k curves and distinct correct solutions of a policy;
- ``plotting``: paper-style plots of finished runs (``asym-trl plot``);
- ``seed_stats``: paired tests and Holm's correction for comparing methods over seeds.

May import: ``asym_trl.trl_compat``, ``asym_trl.errors`` and the layers below (``method``, ``task``, ``generation``);
never the trainers, the config, or ``rollouts`` / ``lifecycle``.
"""
