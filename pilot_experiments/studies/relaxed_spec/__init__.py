"""Speculative decoding with relaxed, modality-aware verification (survey App. D.2, Tables 9-10)."""

from pilot_experiments.studies.relaxed_spec.cli import register_cli

__all__ = ["register_cli"]
