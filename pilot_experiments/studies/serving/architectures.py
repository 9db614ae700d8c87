"""Serving architectures as pools of instances, every one built from the same number of GPUs.

Roles name the stages an instance runs: ``E`` encode, ``P`` prefill, ``D`` decode, and fused roles
``EP``, ``PD`` and ``EPD`` (everything, the monolithic vLLM-style server). Families:

* ``monolithic``      -- N x EPD, each GPU serves whole requests (prefill-priority continuous batching);
* ``E|P|D``           -- stage-based: encode, prefill and decode pools; embeddings E->P, KV P->D;
* ``EP|D``            -- encode+prefill pool and decode pool; KV moves EP->D;
* ``E|PD``            -- encode pool and a colocated prefill+decode pool; every request passes the
                         encode stage (text requests at no compute cost but through its queue);
* ``modality``        -- ModServe-style: image-encode pool + LLM pool, text requests go straight to the
                         LLM pool (the only difference from E|PD, so the two agree on image-only loads);
* ``sm-multiplexed``  -- SpaceServe-style: each GPU split between an encoder and a PD worker by a fixed
                         compute share, or adaptively (a worker whose sibling is idle gets the whole GPU);
                         embeddings stay on the GPU (no transfer).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Literal

Role = Literal["E", "P", "D", "EP", "PD", "EPD"]
Family = Literal["monolithic", "E|P|D", "EP|D", "E|PD", "modality", "sm-multiplexed"]
FAMILIES: tuple[Family, ...] = ("monolithic", "E|P|D", "EP|D", "E|PD", "modality", "sm-multiplexed")


class ArchitectureError(Exception):
    """An architecture cannot be built with the GPUs given (e.g. fewer GPUs than stages)."""


@dataclass(frozen=True)
class Pool:
    role: Role
    instances: int
    gpus_per_instance: int = 1

    def __post_init__(self) -> None:
        if self.instances <= 0 or self.gpus_per_instance <= 0:
            raise ArchitectureError(f"pool {self.role} needs >= 1 instance of >= 1 GPU")

    @property
    def gpus(self) -> int:
        return self.instances * self.gpus_per_instance


@dataclass(frozen=True)
class Architecture:
    """A named set of pools; ``encode_share`` and ``adaptive_share`` apply to SM multiplexing only."""

    family: Family
    pools: tuple[Pool, ...]
    encode_share: float | None = None
    adaptive_share: bool = False

    def __post_init__(self) -> None:
        if self.family == "sm-multiplexed" and (self.encode_share is None or not 0 < self.encode_share < 1):
            raise ArchitectureError("sm-multiplexed needs an encode_share strictly between 0 and 1")

    @property
    def gpus(self) -> int:
        if self.family == "sm-multiplexed":
            return self.pools[0].gpus
        return sum(pool.gpus for pool in self.pools)

    @property
    def name(self) -> str:
        if self.family == "monolithic":
            pool = self.pools[0]
            return f"monolithic {pool.instances}x{pool.gpus_per_instance}"
        if self.family == "sm-multiplexed":
            mode = "adaptive" if self.adaptive_share else "fixed"
            return f"sm-multiplexed {self.gpus} GPUs E-share {self.encode_share:g} {mode}"
        sizes = "/".join(
            f"{pool.gpus}" if pool.gpus_per_instance == 1 else f"{pool.gpus}(tp{pool.gpus_per_instance})"
            for pool in self.pools
        )
        return f"{self.family} {sizes}"

    @property
    def text_bypasses_encode(self) -> bool:
        return self.family in ("monolithic", "modality", "sm-multiplexed")


def monolithic(gpus: int, gpus_per_instance: int = 1) -> Architecture:
    return Architecture("monolithic", (_pool("EPD", gpus, gpus_per_instance),))


def e_p_d(encode: int, prefill: int, decode: int, encode_tp: int = 1, prefill_tp: int = 1) -> Architecture:
    return Architecture("E|P|D", (_pool("E", encode, encode_tp), _pool("P", prefill, prefill_tp), Pool("D", decode)))


def ep_d(encode_prefill: int, decode: int, encode_prefill_tp: int = 1) -> Architecture:
    return Architecture("EP|D", (_pool("EP", encode_prefill, encode_prefill_tp), Pool("D", decode)))


def e_pd(encode: int, prefill_decode: int, encode_tp: int = 1) -> Architecture:
    return Architecture("E|PD", (_pool("E", encode, encode_tp), Pool("PD", prefill_decode)))


def modality(encode: int, llm: int, encode_tp: int = 1) -> Architecture:
    return Architecture("modality", (_pool("E", encode, encode_tp), Pool("PD", llm)))


def sm_multiplexed(gpus: int, encode_share: float, adaptive: bool = False) -> Architecture:
    return Architecture("sm-multiplexed", (Pool("E", gpus), Pool("PD", gpus)), encode_share, adaptive)


def _pool(role: Role, gpus: int, gpus_per_instance: int) -> Pool:
    if gpus % gpus_per_instance:
        raise ArchitectureError(f"{gpus} GPUs do not split into {role} instances of {gpus_per_instance} GPUs")
    return Pool(role, gpus // gpus_per_instance, gpus_per_instance)


def _splits(total: int, parts: int) -> list[tuple[int, ...]]:
    return [split for split in product(range(1, total), repeat=parts) if sum(split) == total]


def _instance_sizes(gpus: int, sizes: tuple[int, ...]) -> list[int]:
    return [size for size in sizes if size <= gpus and gpus % size == 0]


def candidates(family: Family, gpus: int, shares: tuple[float, ...] = (0.25, 0.5),
               instance_sizes: tuple[int, ...] = (1, 2, 4)) -> list[Architecture]:
    """Every GPU split of ``family`` over ``gpus`` GPUs, for the topology search.

    Pools that run the compute-bound stages (encode, prefill, monolithic) may also group their GPUs into
    tensor-parallel instances of ``instance_sizes`` GPUs; decode instances use one GPU each.
    """
    if family == "monolithic":
        return [monolithic(gpus, size) for size in _instance_sizes(gpus, instance_sizes)]
    if family == "sm-multiplexed":
        return [sm_multiplexed(gpus, share, adaptive) for share in shares for adaptive in (False, True)]
    parts = 3 if family == "E|P|D" else 2
    if gpus < parts:
        raise ArchitectureError(f"{family} needs at least {parts} GPUs, got {gpus}")
    found = []
    for split in _splits(gpus, parts):
        first_sizes = _instance_sizes(split[0], instance_sizes)
        if family == "E|P|D":
            found += [e_p_d(*split, e, p) for e in first_sizes for p in _instance_sizes(split[1], instance_sizes)]
        elif family == "EP|D":
            found += [ep_d(*split, size) for size in first_sizes]
        elif family == "E|PD":
            found += [e_pd(*split, size) for size in first_sizes]
        else:
            found += [modality(*split, size) for size in first_sizes]
    return found
