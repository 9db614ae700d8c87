"""What every study shares: presets, the device, progress bars and the results writer.

A study is a function from its config dataclass to a `StudyRecord` (metrics, table rows, an
optional plot). `run_study` times it and writes, for `pilot_experiments/results/<study>/`:

- `<preset>-<device>.json`: study, preset, device name, torch version, git commit, seed, wall time,
  config and metrics (plus the table rows);
- `<preset>-<device>.md`: the same as a markdown table;
- `<preset>-<device>.svg`: the study's plot, when it has one (see `plot_style`: the site derives its dark variant).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pilot_experiments import plot_style

PRESETS = ("smoke", "cpu", "gpu")
RESULTS_DIR = Path(__file__).parent / "results"


class HarnessError(RuntimeError):
    """A study run that cannot be carried out or recorded (unknown preset, unserialisable config)."""


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise HarnessError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    return preset


def pick_device(preset: str | None = None) -> torch.device:
    """CUDA when present (always for the gpu preset, which refuses to run without it), else CPU."""
    if preset == "gpu" and not torch.cuda.is_available():
        raise HarnessError("the gpu preset needs a CUDA device; use --preset cpu on this machine")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device | str) -> str:
    """Short file-name form of the device: 'cpu' or e.g. 'nvidia-h100-80gb-hbm3'."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def short_commit(commit: str) -> str:
    """'a66c8690ac28+dirty' for a full hash with its '+dirty' mark."""
    head, plus, mark = commit.partition("+")
    return head[:12] + plus + mark


def git_commit() -> str:
    """HEAD's hash, with '+dirty' when tracked pilot code differs from it (results files do not count)."""
    package = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10, check=False).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}+dirty" if changed else head


def progress() -> Progress:
    """The project's rich progress bar."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
    )


@dataclass
class StudyRecord:
    """What a study returns: `metrics` (JSON-able), `rows` for the markdown table, and `plot`, a
    function drawing on a matplotlib Figure (or None)."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None
    notes: str = ""


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    raise HarnessError(f"cannot write {type(obj).__name__} to a results file; convert it to numbers or strings")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_results(
    study: str, preset: str, device: torch.device | str, seed: int, config: Any, record: StudyRecord, wall_s: float,
    results_dir: Path = RESULTS_DIR,
) -> Path:
    """Write the JSON, markdown and plot files of one run; returns the JSON path."""
    check_preset(preset)
    out_dir = results_dir / study
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{preset}-{device_slug(device)}"
    payload = {
        "study": study,
        "preset": preset,
        "device": device_name(device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "seed": seed,
        "wall_s": wall_s,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": _jsonable(config),
        "metrics": _jsonable(record.metrics),
        "rows": _jsonable(record.rows),
        "notes": record.notes,
    }
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"<!-- generated by pilot_experiments ({study}, preset {preset}); do not edit -->",
        f"# {study} — preset `{preset}` on {payload['device']}",
        "",
        f"torch {payload['torch']}, commit `{short_commit(payload['git_commit'])}`, seed {seed}, wall time {wall_s:.1f} s.",
        "",
    ]
    if record.notes:
        md += [record.notes, ""]
    md += [markdown_table(record.rows) or markdown_table([{k: v for k, v in payload["metrics"].items() if not isinstance(v, (dict, list))}]), ""]
    (out_dir / f"{stem}.md").write_text("\n".join(md))
    if record.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with plt.rc_context(plot_style.rc()):
            fig = plt.figure(figsize=(10, 4))
            record.plot(fig)
            fig.suptitle(f"{study} ({preset}, {payload['device']})", fontsize=9)
            fig.tight_layout()
            plot_style.save_svg(fig, out_dir / f"{stem}.svg")
            plt.close(fig)
        (out_dir / f"{stem}.png").unlink(missing_ok=True)  # the plot of an earlier run, before plots were SVG
    return path


def add_checkpoint_arguments(parser) -> None:
    """The options a study's command takes to run on a local checkpoint instead of the reference LVLM."""
    parser.add_argument("--model", help="a local Qwen2.5-VL checkpoint directory (needs the hf extra); default: the trained reference LVLM")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when present, else the CPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the preset's")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where to write results (default: the package's results/)")


def checkpoint_run(args, study: str) -> tuple[str, torch.device]:
    """From the options of `add_checkpoint_arguments`: the name the results are filed under
    (`<study>-<checkpoint directory name>` for a checkpoint, so they sit beside the reference
    runs) and the device (`--device`, else what `pick_device` gives the preset)."""
    name = study if args.model is None else f"{study}-{Path(args.model).name}"
    return name, torch.device(args.device) if args.device else pick_device(args.preset)


def run_study(study: str, preset: str, fn: Callable[[Any], StudyRecord], config: Any, *, seed: int = 0, device: torch.device | str | None = None, results_dir: Path = RESULTS_DIR) -> Path:
    """Run `fn(config)`, time it, and write its results (see the module docstring)."""
    check_preset(preset)
    device = pick_device(preset) if device is None else device
    start = time.perf_counter()
    record = fn(config)
    return write_results(study, preset, device, seed, config, record, time.perf_counter() - start, results_dir)
