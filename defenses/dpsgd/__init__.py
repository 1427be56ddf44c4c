"""DP-SGD's machinery behind the ``dp_sgd`` defense (:class:`defenses.dp_sgd.DPSGD`), one concern per module.

- ``calibration``: the Poisson rate q, the local steps per round, σ for a target ε.
- ``group_clip``: ``GroupClip``, the ``group_clip`` option (per-subgroup clipping bounds).
- ``trainer``: ``DPTrainer``, a hospital's DP-SGD trainer: its choice of path, its Poisson
  batches, the audit's canary rows, the released steps and their count.
- ``engine_path``: the default path: ``bench.engine``'s clipped sums (no per-sample gradients
  stored) and ``EngineDPOptimizer``, the stand-in for Opacus's optimizer.
- ``opacus_path``: Opacus's ``GradSampleModule``/``DPOptimizer`` (``grad_sample_mode`` ew, hooks,
  ghost, and the fallback for models the engine cannot compile).

Every name stays importable from ``defenses.dp_sgd``.
"""
