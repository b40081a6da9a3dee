"""Generation: evaluation backends and everything between the trainer and a vLLM server.

- ``backends``: transformers / vLLM / server generators for evaluation and validation;
- ``vllm_serve``: ``asym-trl vllm-serve``, starting the server as server-mode training expects it;
- ``vllm_sync``: the disk weight sync and the end-to-end check after every sync;
- ``vllm_worker``: the server-side worker extension (imported by the vLLM server: it imports neither TRL nor
  transformers, and neither does this ``__init__``);
- ``weight_check``: the probe that compares the trainer's and the server's log-probs;
- ``async_cpu``: the packed attention TRL's asynchronous trainer needs, in torch SDPA (any device).

May import: ``asym_trl.errors`` and ``asym_trl.trl_compat`` only (the lowest layer above the base).
"""
