"""Backends: the model behind a study, as the reference LVLM (`reference.py`) or a `transformers`
checkpoint (`hf.py`, needs the optional `hf` packages), both speaking `base.Backend`."""

from pilot_experiments.backends.base import Backend, BackendError, QueryTap
from pilot_experiments.backends.reference import ReferenceBackend, ReferenceQueryTap

__all__ = ["Backend", "BackendError", "QueryTap", "ReferenceBackend", "ReferenceQueryTap"]
