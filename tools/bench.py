"""`bench [--papers 1000,10000] [--out FILE] [--repeats N] [--site]`: how fast the toolchain handles many papers.

For each size, synthetic valid papers are written to a temporary repository (with the real taxonomy) and three
things are timed, each as the median of several runs: the bare parse of the same files with libyaml's safe C
loader (the floor any YAML-based validator pays), `load_repository` (read, parse, validate, every cross-file
check), and `export_bibtex`. Results are printed and written as JSON plus a markdown table next to it.
`--site` hands over to the site benchmark (`tools.site_bench`) instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydantic
import yaml

from tools.loading import TAXONOMY_FILE, VOCABULARY_FILE, SafeLoader, load_taxonomy
from tools.repository import load_repository
from tools.models import PlacedNode

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
DEFAULT_OUT = Path("bench-results") / "tools-bench.json"


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


def bare_parse(files: list[Path]) -> int:
    """The floor: read every file and parse it with the C loader, nothing else."""
    return sum(len(yaml.load(path.read_text(encoding="utf-8"), Loader=SafeLoader)) for path in files)  # noqa: S506


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_size(count: int, repeats: int, source_root: Path) -> dict:
    """Median wall and CPU times for one size. The three measurements alternate so that load from other
    processes falls on all of them alike; CPU time is what this process used, which a busy machine inflates
    less than wall time."""
    from tools.bibtex import export_bibtex

    with tempfile.TemporaryDirectory(prefix="tools-bench-") as folder:
        root = Path(folder)
        files = write_synthetic_repository(root, count, source_root)
        repository = load_repository(root)  # warms the file cache and checks the papers are valid
        if len(repository.papers) != count:
            raise RuntimeError("the synthetic papers should all be valid")
        runs: dict[str, list[tuple[float, float]]] = {"parse": [], "validate": [], "export": []}
        for _ in range(repeats):
            runs["parse"].append(timed(lambda: bare_parse(files)))
            runs["validate"].append(timed(lambda: load_repository(root)))
            runs["export"].append(timed(lambda: export_bibtex(repository.papers)))
    row: dict = {"papers": count}
    for clock, index in (("wall", 0), ("cpu", 1)):
        parse, validate, export = (statistics.median(t[index] for t in runs[key])
                                   for key in ("parse", "validate", "export"))
        row[clock] = {
            "bare_parse_s": parse,
            "load_validate_s": validate,
            "export_bibtex_s": export,
            "validate_over_parse": validate / parse,
            "export_over_parse": export / parse,
        }
    return row


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


def markdown_table(results: dict) -> str:
    lines = [
        "<!-- Generated by `python -m tools bench`; numbers measured on the machine named below. -->",
        "",
        f"Measured {results['date']} on {results['machine']['platform']} "
        f"({results['machine']['cpu_count']} CPUs, Python {results['machine']['python']}, "
        f"load average {results['load_average']}), median of {results['repeats']} runs.",
        "",
        "| papers | clock | bare C-YAML parse (s) | load + validate (s) | export-bibtex (s) | validate / parse | "
        "export / parse |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["sizes"]:
        for clock in ("cpu", "wall"):
            m = row[clock]
            lines.append(f"| {row['papers']:,} | {clock} | {m['bare_parse_s']:.3f} | {m['load_validate_s']:.3f} | "
                         f"{m['export_bibtex_s']:.3f} | {m['validate_over_parse']:.2f} | "
                         f"{m['export_over_parse']:.2f} |")
    return "\n".join(lines) + "\n"


def paper_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("paper counts must be positive")
    return counts


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time validation and BibTeX export on synthetic papers",
        description="Generate synthetic valid papers in a temporary folder and time load+validate and "
                    "export-bibtex against the bare C-YAML parse of the same files; print the medians and "
                    "ratios and write them as JSON and markdown. --site runs the site benchmark instead.",
    )
    parser.add_argument("--papers", type=paper_counts, default=[1000, 10000], metavar="N[,N...]",
                        help="paper counts to try (default: 1000,10000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE",
                        help=f"JSON results file; a .md table is written next to it (default: {DEFAULT_OUT})")
    parser.add_argument("--site", action="store_true", help="run the site build benchmark (tools.site_bench)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.site:
        from tools import site_bench  # only needed here; it pulls in the site build

        return site_bench.main(args)
    from rich.progress import Progress

    sizes = []
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(args.papers))
        for count in args.papers:
            progress.update(task, description=f"{count:,} papers")
            sizes.append(run_size(count, args.repeats, args.root))
            progress.advance(task)
    results = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "repeats": args.repeats,
               "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()), "machine": machine(),
               "sizes": sizes}
    table = markdown_table(results)
    print(table, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0
