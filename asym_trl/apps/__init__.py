"""Applications of the library, not its API.

- ``quickstart``: the README's main job (``make quickstart``): an offline CPU warm start + AsymGRPO run;
  ``quickstart_callbacks``: its progress bars and held-out curve (transformers callbacks, imported when it runs);
- ``tiny``: the tiny offline Qwen3, its tokenizer and a toy task, for CPU runs and the tests;
- ``countdown``: the countdown task of the testbed studies (several correct solutions per problem);
- ``multinode`` / ``multinode_node``: a multi-node launch rehearsed on one host (the launcher; one training node).

May import everything in the package; nothing in the package imports it (``tests/test_architecture.py``).
"""
