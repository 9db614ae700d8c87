"""SparseMM's visual-head scores, measured on SynthVis, where every object's patches are known.

For each calibration question about one object, the query that produces the answer (the <ans>
position) is observed; a query head scores a hit when its strongest attention among the visual
entries falls on one of the object's patches. A KV head's score is the hit rate of its query heads.
"""

from __future__ import annotations

import torch

from pilot_experiments import synthvis
from pilot_experiments.backends import ReferenceQueryTap
from pilot_experiments.model import LVLM
from pilot_experiments.studies.hybrid_kv.observe import observe
from pilot_experiments.studies.hybrid_kv.policies import PolicyError

SINGLE_OBJECT_KINDS = ("colour", "shape", "size", "texture")


@torch.no_grad()
def visual_head_scores(model: LVLM, episodes: list[synthvis.Episode], tok: synthvis.Tokenizer) -> torch.Tensor:
    """(layers, kv_heads) hit rates over the single-object questions of single-image `episodes`
    (use a split other than the one evaluated)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    hits = torch.zeros(cfg.lm_layers, cfg.lm_heads)
    asked = 0
    with ReferenceQueryTap(model) as tap:
        for ep in episodes:
            scene = ep.scenes[0]
            for qa in ep.qas:
                if qa.kind not in SINGLE_OBJECT_KINDS or len(ep.scenes) != 1:
                    continue
                text = torch.tensor([tok.encode(qa.question) + [tok.ans_id]], device=device)
                inputs = model.embed_prompt(ep.pixels[None].to(device), torch.tensor([ep.times], device=device), text)
                cache = model.new_cache(1, capacity=inputs.length)
                model.prefill(inputs, cache)
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
    group = cfg.lm_heads // cfg.lm_kv_heads
    return (hits / asked).view(cfg.lm_layers, cfg.lm_kv_heads, group).mean(-1)
