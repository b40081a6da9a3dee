"""Starting a run from a recipe, and publishing it after: what ``asym-trl train`` does before and after the trainer.

- ``recipes``: loading a YAML recipe (``base:``, ``env:``, command-line overrides), checking every key, the batch
  arithmetic, ``module:function`` specs;
- ``preflight``: what is checked offline before anything heavy loads (and what ``--dry-run`` resolves);
- ``loggers``: the loggers of ``report_to`` (wandb, trackio, tensorboard): their packages checked before anything
  loads, and where they log by default (wandb under ``output_dir``, project ``asym-trl``);
- ``model_card``: the model card of a run directory (training metrics, validation and evaluation tables, recipe);
- ``hub``: the Hugging Face Hub push (``asym-trl push``).

May import: the config, the trainers and every layer below them; never the entry modules (``train``,
``train_async``, ``cli``) or ``apps``.
"""
