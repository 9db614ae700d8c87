"""MadaKV as a kvpress press: per-head budgets from modality preference, with layer-wise compensation."""

from __future__ import annotations

from dataclasses import dataclass

from pilot_experiments.presses.observed import ObservedPress
from pilot_experiments.studies.hybrid_kv import MadaKV


@dataclass
class MadaKVPress(ObservedPress):
    """MadaKV (Li et al., 2025, https://arxiv.org/abs/2506.15724): each KV head's share of the budget follows how
    much of its attention goes to image entries, and layers that follow ones whose uniform budget dropped attention
    mass get more. The decision is the study's `MadaKV` policy, run on the attention of the prompt's last
    `window_size` queries (`ObservedPress`); `compensation` and `floor` are its knobs.

    Deviations from the paper, named: the modality preference and the lost mass are measured on kvpress's
    question-agnostic window (the prompt's last queries), not on the paper's own observation; the compensation is
    the study's reading (a layer's budget grows with the attention mass the layers before it lost under a uniform
    budget); text entries are always kept; removed entries are masked, not freed.
    """

    compensation: float = 1.0
    floor: float = 0.1

    def policy(self, budget: float) -> MadaKV:
        return MadaKV(budget, compensation=self.compensation, floor=self.floor)
