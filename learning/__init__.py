"""The learning loop of ReSpect (docs/method.md): retrospect → datasets → train → report.

* ``learning.retrospect`` — the feedback decoder (base model, text only) and heuristic labels.
* ``learning.datasets`` — D≤ρ and held-out human turns from the database; augmentation; collator.
* ``learning.losses`` — SUP, RL and KTO losses as small tensor functions.
* ``learning.train`` — per-method configs, the training loop, adapters with their manifest.
* ``learning.report`` — the metrics of docs/method.md per system and round, Markdown with PNG plots.
* ``learning.cli`` — the ``multiref retrospect / train / report`` commands.

It meets the game server only through the database, and builds policy prompts only with
``policy_worker.prompt`` so a model is trained on exactly what it sees when it plays.
"""
