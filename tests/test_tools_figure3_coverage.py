"""Every method of the survey's Figure 3 (arXiv 2604.05546) is in papers/, by its `name`, under its node.

The list is transcribed from /work/shared/seed-data/survey_taxonomy_tables.txt (Figure 3) with the citation the
figure gives, so that two works sharing a name (FastVLM, SpecVLM) must be two different papers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tools.repository import load_repository

E = "encoding"
P = "prefilling"
D = "decoding"

FIGURE_3: list[tuple[str, str, str]] = [
    # (name as the figure writes it, node path, citation in the figure)
    ("FastViT", f"{E}/efficient-vision-encoders/image-related", "Vasu et al., 2023"),
    ("ConvLLaVA", f"{E}/efficient-vision-encoders/image-related", "Ge et al., 2024"),
    ("FastVLM", f"{E}/efficient-vision-encoders/image-related", "Vasu et al., 2025"),
    ("Video-LLaMA", f"{E}/efficient-vision-encoders/video-related", "Zhang et al., 2023"),
    ("Qwen2-VL", f"{E}/efficient-vision-encoders/video-related", "Wang et al., 2024d"),
    ("VideoChatGPT", f"{E}/efficient-vision-encoders/video-related", "Maaz et al., 2024"),
    ("LongVILA", f"{E}/efficient-vision-encoders/video-related", "Song et al., 2024c"),
    ("LongVA", f"{E}/efficient-vision-encoders/video-related", "Zhang et al., 2024d"),
    ("LongVLM", f"{E}/efficient-vision-encoders/video-related", "Weng et al., 2024"),
    ("LongVU", f"{E}/efficient-vision-encoders/video-related", "Shen et al., 2025b"),
    ("BLIP-2", f"{E}/efficient-modality-adapters", "Li et al., 2023a"),
    ("Qwen-VL", f"{E}/efficient-modality-adapters", "Bai et al., 2023"),
    ("HoneyBee", f"{E}/efficient-modality-adapters", "Cha et al., 2024"),
    ("TokenPacker", f"{E}/efficient-modality-adapters", "Li et al., 2025e"),
    ("Adaptive Keyframe Sampling", f"{E}/keyframe-selection/training-free", "Tang et al., 2025"),
    ("Q-Frame", f"{E}/keyframe-selection/training-free", "Zhang et al., 2025g"),
    ("Video-Tree", f"{E}/keyframe-selection/training-free", "Wang et al., 2025g"),
    ("FOCUS", f"{E}/keyframe-selection/training-free", "Zhu et al., 2025b"),
    ("ViLA", f"{E}/keyframe-selection/training-aware", "Wang et al., 2024g"),
    ("Frame-Voyager", f"{E}/keyframe-selection/training-aware", "Li et al., 2025e"),
    ("M-LLM video selector", f"{E}/keyframe-selection/training-aware", "Hu et al., 2025a"),
    ("VisionThink", f"{E}/adaptive-resolution", "Yang et al., 2025b"),
    ("Q-Frame", f"{E}/adaptive-resolution", "Zhang et al., 2025g"),
    ("LongVU", f"{E}/adaptive-resolution", "Shen et al., 2025b"),
    ("LLaVA-PruMerge", f"{E}/encoding-side-token-compression/attention-agnostic", "Shang et al., 2024"),
    ("TRIM", f"{E}/encoding-side-token-compression/attention-agnostic", "Song et al., 2024b"),
    ("PVC", f"{E}/encoding-side-token-compression/attention-agnostic", "Yang et al., 2024a"),
    ("FOLDER", f"{E}/encoding-side-token-compression/attention-agnostic", "Wang et al., 2025a"),
    ("VisionZip", f"{E}/encoding-side-token-compression/attention-aware", "Yang et al., 2024b"),
    ("VisPruner", f"{E}/encoding-side-token-compression/attention-aware", "Zhang et al., 2025e"),
    ("SparseVILA", f"{E}/encoding-side-token-compression/attention-aware", "Khaki et al., 2025"),
    ("HIVTP", f"{E}/encoding-side-token-compression/attention-aware", "Xu et al., 2025a"),
    ("ToSA", f"{E}/encoding-side-token-compression/attention-aware", "Huang et al., 2025b"),
    ("FrameFusion", f"{P}/token-compression/diversity-guided", "Fu et al., 2024"),
    ("G-Prune", f"{P}/token-compression/diversity-guided", "Jiang et al., 2025"),
    ("DART", f"{P}/token-compression/diversity-guided", "Wen et al., 2025"),
    ("PACT", f"{P}/token-compression/diversity-guided", "Dhouib et al., 2025"),
    ("AIM", f"{P}/token-compression/diversity-guided", "Zhong et al., 2024"),
    ("DivPrune", f"{P}/token-compression/diversity-guided", "Alvar et al., 2025"),
    ("FastVID", f"{P}/token-compression/diversity-guided", "Shen et al., 2025a"),
    ("DyCoke", f"{P}/token-compression/diversity-guided", "Tao et al., 2025a"),
    ("CDPruner", f"{P}/token-compression/diversity-guided", "Zhang et al., 2025f"),
    ("PruneVid", f"{P}/token-compression/diversity-guided", "Huang et al., 2025d"),
    ("HoliTom", f"{P}/token-compression/diversity-guided", "Shao et al., 2025a"),
    ("VidCom2", f"{P}/token-compression/diversity-guided", "Liu et al., 2025b"),
    ("STTM", f"{P}/token-compression/diversity-guided", "Hyun et al., 2025"),
    ("StreamingTOM", f"{P}/token-compression/diversity-guided", "Chen et al., 2025a"),
    ("Dynamic-VLM", f"{P}/token-compression/diversity-guided", "Wang et al., 2024b"),
    ("TimeChat-Online", f"{P}/token-compression/diversity-guided", "Yao et al., 2025"),
    ("FastV", f"{P}/token-compression/attention-guided", "Chen et al., 2024b"),
    ("PyramidDrop", f"{P}/token-compression/attention-guided", "Xing et al., 2024"),
    ("FrameFusion", f"{P}/token-compression/attention-guided", "Fu et al., 2024"),
    ("HoliTom", f"{P}/token-compression/attention-guided", "Shao et al., 2025a"),
    ("SparseVLM", f"{P}/token-compression/attention-guided", "Zhang et al., 2024e"),
    ("BTP", f"{P}/token-compression/attention-guided", "Li et al., 2025c"),
    ("FitPrune", f"{P}/token-compression/attention-guided", "Ye et al., 2025a"),
    ("ATP-LLaVA", f"{P}/token-compression/attention-guided", "Ye et al., 2025b"),
    ("HiMix", f"{P}/token-compression/attention-guided", "Zhang et al., 2025i"),
    ("ZipVL", f"{P}/token-compression/attention-guided", "He et al., 2024"),
    ("Dynamic-LLaVa", f"{P}/token-compression/attention-guided", "Huang et al., 2025c"),
    ("EfficientLLaVA", f"{P}/token-compression/attention-guided", "Liang et al., 2025"),
    ("StreamingVLM", f"{P}/token-compression/attention-guided", "Xu et al., 2025b"),
    ("VideoNSA", f"{P}/sparse-attention", "Song et al., 2025"),
    ("SpargeAttn", f"{P}/sparse-attention", "Zhang et al., 2025c"),
    ("XAttention", f"{P}/sparse-attention", "Xu et al., 2025c"),
    ("MMInference", f"{P}/sparse-attention", "Li et al., 2025g"),
    ("Video-XL-2", f"{P}/sparse-attention", "Qin et al., 2025"),
    ("LOOK-M", f"{D}/kv-cache-compression/token-level", "Wan et al., 2024b"),
    ("Elastic Cache", f"{D}/kv-cache-compression/token-level", "Liu et al., 2024d"),
    ("ReKV", f"{D}/kv-cache-compression/token-level", "Di et al., 2025"),
    ("LiveVLM", f"{D}/kv-cache-compression/token-level", "Ning et al., 2025b"),
    ("FastCache", f"{D}/kv-cache-compression/token-level", "Zhu et al., 2025a"),
    ("Inf-MLLM", f"{D}/kv-cache-compression/token-level", "Ning et al., 2024"),
    ("SparseVILA", f"{D}/kv-cache-compression/token-level", "Khaki et al., 2025"),
    ("VL-Cache", f"{D}/kv-cache-compression/layer-level", "Tu et al., 2024"),
    ("MEDA", f"{D}/kv-cache-compression/layer-level", "Wan et al., 2025"),
    ("ST3", f"{D}/kv-cache-compression/layer-level", "Zhuang et al., 2025"),
    ("MadaKV", f"{D}/kv-cache-compression/layer-level", "Li et al., 2025d"),
    ("InfiniPot-V", f"{D}/kv-cache-compression/layer-level", "Kim et al., 2025"),
    ("SparseMM", f"{D}/kv-cache-compression/head-level", "Wang et al., 2025b"),
    ("AKVQ-VL", f"{D}/kv-cache-compression/bit-level", "Su et al., 2025"),
    ("CalibQuant", f"{D}/kv-cache-compression/bit-level", "Han et al., 2025"),
    ("VidKV", f"{D}/kv-cache-compression/bit-level", "Tao et al., 2025b"),
    ("SpecVLM", f"{D}/speculative-decoding/training-free", "Ji et al., 2025"),
    ("Spec-LLaVA", f"{D}/speculative-decoding/training-aware", "Huo et al., 2025"),
    ("MSD", f"{D}/speculative-decoding/training-aware", "Lin et al., 2025"),
    ("ViSpec", f"{D}/speculative-decoding/training-aware", "Kang et al., 2025"),
    ("FastVLM", f"{D}/speculative-decoding/training-aware", "Bajpai and Hanawal, 2025"),
    ("SpecVLM", f"{D}/speculative-decoding/training-aware", "Huang et al., 2025a"),
    ("FLASH", f"{D}/speculative-decoding/training-aware", "Wang et al., 2025f"),
    ("FS-VisPR", f"{D}/efficient-reasoning", "Li et al., 2025b"),
    ("PixelThink", f"{D}/efficient-reasoning", "Wang et al., 2025c"),
    ("CAR", f"{D}/efficient-reasoning", "Lu et al., 2025"),
]


def name_key(name: str) -> str:
    """Figure 3 and the papers spell some names differently ('VideoChatGPT', 'Video-ChatGPT'): compare letters and digits."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


@pytest.fixture(scope="module")
def placed(repo_root_module: Path) -> dict[tuple[str, str], list[str]]:
    """(name key, node) -> ids of the papers with that name placed at that node."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for paper in load_repository(repo_root_module).papers:
        if paper.name:
            for node in paper.taxonomy:
                found[name_key(paper.name), node].append(paper.id)
    return found


@pytest.fixture(scope="module")
def repo_root_module() -> Path:
    return Path(__file__).resolve().parent.parent


def test_figure_3_nodes_exist(repo_root_module: Path) -> None:
    nodes = load_repository(repo_root_module).nodes
    assert {node for _, node, _ in FIGURE_3} <= set(nodes)


def test_every_figure_3_method_is_under_its_node(placed: dict[tuple[str, str], list[str]]) -> None:
    missing = [f"{name} ({citation}) under {node}" for name, node, citation in FIGURE_3
               if not placed.get((name_key(name), node))]
    assert not missing, f"{len(missing)} of {len(FIGURE_3)} Figure 3 entries missing:\n" + "\n".join(missing)


def test_works_sharing_a_name_are_different_papers(placed: dict[tuple[str, str], list[str]]) -> None:
    citations: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, node, citation in FIGURE_3:
        citations[name_key(name)][citation].update(placed.get((name_key(name), node), []))
    for name, by_citation in citations.items():
        if len(by_citation) > 1:
            papers = list(by_citation.values())
            assert all(papers), f"{name}: every cited work needs its own paper"
            assert not set.intersection(*papers), f"{name}: {dict(by_citation)} must be different papers"
