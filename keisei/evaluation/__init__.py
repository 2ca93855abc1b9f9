"""Evaluation: measure agents in matches, for ``evaluate.py`` and for periodic evaluation during
training (``keisei.train.periodic_evaluation``). Docs: docs/evaluation.md.

- ``app``: what ``evaluate.py`` runs, ``run_evaluation(cfg, out_dir)``: the checkpoint against one
  opponent, a gauntlet or in a round robin; console output and W&B.
- ``opponents``: the players a config names: the agent from its checkpoint (``checkpoint_player``),
  opponents from configs or presets (``build_opponent``, ``opponent_preset``), the presets of
  ``evaluation.periodic_opponents``.
- ``tournament``: one match written to an output dir (``play_and_record``), ``round_robin``,
  ``gauntlet``, and a periodic evaluation's matches (``periodic_matches``; with ``evaluation=ladder``
  a ``PeriodicLadder`` rating instead of the match against ``opponent``).
- ``report``: results as text (console lines, the gauntlet's table) and as metrics (``eval/...``).
- ``worker``: the background worker's command line, ``python -m keisei.evaluation.worker``.
- ``elo``: the Elo model: one match's figures and the ratings fitted to many.

The package itself imports nothing (``keisei.play.match`` uses ``elo``); import from the modules.
"""
