"""Pilot study 3: progressive state management for unbounded video streams (survey section 6)."""

from pilot_experiments.studies.streaming.cli import register_cli
from pilot_experiments.studies.streaming.study import (
    PRESETS,
    StreamingConfig,
    config_for,
    run_streaming,
)

__all__ = ["PRESETS", "StreamingConfig", "config_for", "register_cli", "run_streaming"]
