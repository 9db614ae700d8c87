"""Our presses inside lmms-eval: a model class that wraps a Qwen2.5-VL checkpoint with a chosen press, and a small
local task built from SynthVis pictures.

    pip install -e '.[hf,kvpress,lmms]'
    python -m pilot_experiments lmms-task tasks/          # writes the synthvis_qa task (no download)
    lmms-eval --model efficient_lvlm --model_args pretrained=DIR,press=hybridkv,budget=0.2 \\
        --tasks synthvis_qa --include_path tasks/ --output_path out/

lmms-eval finds the model through the `lmms_eval.models` entry point (`manifests`); nothing here imports lmms-eval
until it asks for the class.
"""

from __future__ import annotations

MODEL_ID = "efficient_lvlm"


def manifests():
    """lmms-eval's entry point: the model's manifest (`pyproject.toml`, group `lmms_eval.models`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path="pilot_experiments.lmms.model.PressedVLM")]
