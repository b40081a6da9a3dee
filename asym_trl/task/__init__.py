"""The math task: verifiable rewards, the verifier, the data and the benchmarks' evaluation.

- ``rewards``: TRL reward functions (``accuracy`` through math-verify, ``format``) and their registry;
- ``verifier``: the time-bounded math-verify worker (untrusted model output);
- ``data``: MATH and the paper's five benchmarks by hub id, local copies, offline reasoning-gym tasks;
- ``evaluation``: Avg@k on the benchmarks and ``asym-trl eval``;
- ``hub_access``: whether a model or dataset can come from the Hub here (one probe, ``HF_HUB_OFFLINE``, the cache).

May import: ``asym_trl.errors``, ``asym_trl.trl_compat`` and ``asym_trl.generation`` (evaluation generates); never
the method, the trainers or anything about a run.
"""
