"""Our KV-cache policies as kvpress presses (`pip install -e '.[kvpress]'`), so they run inside the field's own tool:

    from pilot_experiments.presses import LookMPress
    with LookMPress(compression_ratio=0.8)(model):
        model.generate(input_ids, max_new_tokens=32)

Each press follows kvpress's protocol: it compresses once, right after the prompt's prefill, and every
later token attends what it kept. kvpress is imported here, so importing this package needs the extra.
"""

from pilot_experiments.presses.hybrid import HybridPress
from pilot_experiments.presses.look_m import LookMPress, merge_evicted
from pilot_experiments.presses.madakv import MadaKVPress
from pilot_experiments.presses.sparse_mm import SparseMMPress

__all__ = ["HybridPress", "LookMPress", "MadaKVPress", "SparseMMPress", "merge_evicted"]
