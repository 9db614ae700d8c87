"""Synthetic repositories and the machine description that the benchmarks share (`tools.bench`, `tools.site_bench`).

A synthetic paper has the size and shape of a real one and is valid against the real taxonomy and vocabulary.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import random
import shutil
import string
from pathlib import Path

import pydantic
import yaml

from tools.loading import TAXONOMY_FILE, VOCABULARY_FILE, load_taxonomy
from tools.models import PlacedNode

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))


def synthetic_paper(index: int, rng: random.Random, leaves: list[PlacedNode], vocabulary: list[str]) -> dict:
    """A valid paper of the size and shape of the real ones, unique in id, arXiv id, DOI and title."""
    node = rng.choice(leaves)
    year = rng.randint(2019, 2025)
    name = f"{rng.choice(vocabulary).capitalize()}{index}"
    title = f"{name}: " + " ".join(rng.choice(vocabulary) for _ in range(rng.randint(6, 14))).capitalize()
    paper = {
        "id": f"{name.lower()}-{year}",
        "name": name,
        "title": title,
        "authors": [f"{_word(rng).capitalize()} {_word(rng).capitalize()}" for _ in range(rng.randint(2, 10))],
        "year": year,
        "venue": rng.choice(["CVPR", "ICCV", "ECCV", "NeurIPS", "ICLR", "AAAI", "arXiv"]),
        "venue_type": "conference",
        "arxiv": f"{year % 100:02d}{rng.randint(1, 12):02d}.{index:05d}",
        "doi": f"10.5555/bench.{index}",
        "code": f"https://github.com/{_word(rng)}/{name.lower()}",
        "kind": node.kind,
        "taxonomy": [node.path],
        "attributes": {facet: rng.choice(values) for facet, values in node.facets.items()},
        "models": rng.sample(["LLaVA-1.5-7B", "LLaVA-1.5-13B", "Qwen2-VL-7B", "InternVL2-8B"], k=2),
        "summary": " ".join(rng.choice(vocabulary) for _ in range(rng.randint(25, 45))).capitalize() + ".",
        "sources": ["community"],
        "added": dt.date(2026, 1, 1) + dt.timedelta(days=index % 300),
    }
    if paper["venue"] == "arXiv":
        paper["venue_type"] = "preprint"
    return paper


def write_synthetic_repository(root: Path, count: int, source_root: Path, seed: int = 0) -> list[Path]:
    (root / "taxonomy").mkdir(parents=True)
    for relative in (TAXONOMY_FILE, VOCABULARY_FILE):
        shutil.copy(source_root / relative, root / relative)
    (root / "papers").mkdir()
    nodes = load_taxonomy(root).flatten()
    leaves = [node for node in nodes.values() if not node.node.children]
    rng = random.Random(seed)
    vocabulary = [_word(rng) for _ in range(5000)]
    files = []
    for index in range(count):
        paper = synthetic_paper(index, rng, leaves, vocabulary)
        path = root / "papers" / f"{paper['id']}.yaml"
        text = yaml.dump(paper, Dumper=SafeDumper, sort_keys=False, allow_unicode=True, width=110)
        path.write_text("# yaml-language-server: $schema=../taxonomy/paper.schema.json\n" + text, encoding="utf-8")
        files.append(path)
    return files


def machine() -> dict:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "pyyaml": yaml.__version__,
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
        "pydantic": pydantic.VERSION,
    }
