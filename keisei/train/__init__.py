"""Training: ``loop`` (the loop, top to bottom), ``run`` (what every algorithm shares: checks, run
dir, resume, metrics, periodic evaluation, checkpoints, stop signals, teardown), ``algorithm`` (each
algorithm's collect / learn pair; PPO: ``rollout`` and ``ppo``), ``opponent_pool``, ``optim``,
``state`` (what a checkpoint restores), ``metrics``, ``periodic_evaluation``, ``distributed``
(DD-PPO), ``preemption``, ``sweep`` (multirun summary). Docs: docs/architecture.md, docs/training.md."""
