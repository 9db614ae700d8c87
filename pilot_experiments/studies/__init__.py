"""The pilot studies, one subpackage per study (survey section 6 and Appendices C-E).

Each study exposes ``register_cli(subparsers)`` for ``python -m pilot_experiments <study>`` and writes its
results through ``pilot_experiments.harness`` to ``pilot_experiments/results/<study>/``.
"""
