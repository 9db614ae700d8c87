"""Pilot study 1 (survey Appendix D.1): hybrid KV-cache compression driven by head behaviour.

Policies (`policies.py`, `hybrid.py`) compress the reference LVLM's KV cache after prefill;
`study.py` evaluates them on SynthVis and `report.py` writes the Table 7 / 8 analogues.
"""

from pilot_experiments.studies.hybrid_kv.hybrid import (
    Hybrid,
    RetrievalLayerCache,
    rank_chunks,
)
from pilot_experiments.studies.hybrid_kv.observe import Observation, observe
from pilot_experiments.studies.hybrid_kv.policies import (
    Compose,
    FullCache,
    LookM,
    MadaKV,
    Policy,
    PolicyError,
    Quantize,
    SparseMM,
    VisualBudgetPolicy,
)

__all__ = [
    "Compose", "FullCache", "Hybrid", "LookM", "MadaKV", "Observation", "Policy", "PolicyError", "Quantize",
    "RetrievalLayerCache", "SparseMM", "VisualBudgetPolicy", "observe", "rank_chunks",
]
