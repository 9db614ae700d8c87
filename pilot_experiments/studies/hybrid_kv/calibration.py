"""SparseMM's visual-head scores, measured on SynthVis, where every object's patches are known.

For each calibration question about one object, the query that produces the answer (at the answer
start, `<ans>` for the reference LVLM) is observed; a query head scores a hit when its strongest
attention among the visual entries falls on one of the object's patches. A KV head's score is the
hit rate of its query heads.
"""

from __future__ import annotations

import torch

from pilot_experiments import synthvis
from pilot_experiments.backends.prompts import Prompter
from pilot_experiments.studies.hybrid_kv.observe import observe
from pilot_experiments.studies.hybrid_kv.policies import PolicyError

SINGLE_OBJECT_KINDS = ("colour", "shape", "size", "texture")


@torch.no_grad()
def visual_head_scores(prompter: Prompter, episodes: list[synthvis.Episode]) -> torch.Tensor:
    """(layers, kv_heads) hit rates over the single-object questions of single-image `episodes`
    (use a split other than the one evaluated)."""
    backend = prompter.backend
    hits = torch.zeros(backend.n_layers, backend.n_heads)
    asked = 0
    with backend.query_tap() as tap:
        for ep in episodes:
            scene = ep.scenes[0]
            for qa in ep.qas:
                if qa.kind not in SINGLE_OBJECT_KINDS or len(ep.scenes) != 1:
                    continue
                inputs = prompter.prompt(ep, qa.question)
                cache = backend.new_cache(1, capacity=inputs.length)
                backend.prefill(inputs, cache)
                obs = observe(tap, cache, window=1)
                visual_slots = torch.nonzero(obs.visual[0, 0]).flatten()
                target = torch.zeros(len(visual_slots), dtype=torch.bool)
                target[torch.as_tensor(scene.object_patches(qa.objects[0][1]))] = True
                for i, a in enumerate(obs.attention):
                    best = a[0, :, -1, visual_slots].argmax(-1).cpu()  # (heads,)
                    hits[i] += target[best].float()
                asked += 1
    if asked == 0:
        raise PolicyError("no single-object question among the calibration episodes; calibrate on single-image episodes")
    group = backend.n_heads // backend.n_kv_heads
    return (hits / asked).view(backend.n_layers, backend.n_kv_heads, group).mean(-1)
