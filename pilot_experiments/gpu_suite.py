"""`python -m pilot_experiments gpu-suite --model DIR [--out DIR] [--dry-run]`: every GPU run, one command.

Runs, one after another on one H100/H200, each study's `gpu` preset on the Qwen2.5-VL checkpoint in DIR, the serving
simulation, the kvpress comparison on SynthVis pictures and an lmms-eval sample (the synthvis_qa task under HybridKV
at a fifth of the image), and writes every results file under `--out`. Each run is its own process with a time
limit; the limits sum to 30 minutes, so the suite ends within them: a run that reaches its limit is stopped and
reported, and the suite goes on. `--dry-run` checks the checkpoint directory and lists the runs without starting
any (no GPU needed). The limits are what each run is allowed, not measured times.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pilot_experiments import harness
from pilot_experiments.backends.hf import check_checkpoint
from pilot_experiments.harness import HarnessError

SUITE_MINUTES = 30
LMMS_TASK = "lmms-task"  # where, under --out, the synthvis_qa task is written


@dataclass(frozen=True)
class Run:
    """One run of the suite: a name, its command line and its time limit in minutes."""

    name: str
    argv: tuple[str, ...]
    minutes: int


def runs(model: Path, out: Path) -> list[Run]:
    """The suite, in order; every command writes under `out`."""
    python = (sys.executable, "-m", "pilot_experiments")
    on_model = ("--preset", "gpu", "--model", str(model), "--device", "cuda", "--results-dir", str(out))
    task = out / LMMS_TASK
    return [
        Run("hybrid-kv", (*python, "hybrid-kv", *on_model), 7),
        Run("relaxed-spec", (*python, "relaxed-spec", *on_model), 7),
        Run("streaming", (*python, "streaming", *on_model), 6),
        Run("serving", (*python, "serving", "--preset", "gpu", "--parts", "simulator", "--results-dir", str(out)), 2),
        Run("kvpress comparison", (*python, "hybrid-kv", "--engine", "kvpress", "--model", str(model), "--device", "cuda",
                                   "--dtype", "bfloat16", "--results-dir", str(out)), 4),
        Run("lmms-eval task", (*python, "lmms-task", str(task), "--episodes", "50"), 1),
        Run("lmms-eval sample", (sys.executable, "-m", "lmms_eval", "--model", "efficient_lvlm", "--model_args",
                                 f"pretrained={model},press=hybridkv,budget=0.2,device=cuda,dtype=bfloat16,"
                                 f"efficiency_log={out / 'lmms' / 'efficiency.json'}",
                                 "--tasks", "synthvis_qa", "--include_path", str(task), "--output_path", str(out / "lmms")), 3),
    ]


def run_suite(model: Path, out: Path, *, dry_run: bool) -> list[dict]:
    """Each run's outcome (or, dry, what would run)."""
    if not model.is_dir():
        raise HarnessError(f"--model {model}: pass a local Qwen2.5-VL checkpoint directory")
    suite = runs(check_checkpoint(model), out)
    if dry_run:
        return [{"run": r.name, "limit_min": r.minutes, "command": " ".join(r.argv)} for r in suite]
    import torch

    if not torch.cuda.is_available():
        raise HarnessError("gpu-suite runs the gpu presets and needs a CUDA device; --dry-run lists the runs without one")
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for r in suite:
        start = time.perf_counter()
        try:
            code = subprocess.run(r.argv, timeout=60 * r.minutes, check=False).returncode
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {r.minutes}-minute limit"
        outcomes.append({"run": r.name, "status": status, "seconds": round(time.perf_counter() - start, 1)})
        print(f"{r.name}: {status}", flush=True)
    return outcomes


def run_cli(args) -> int:
    out = Path(args.out) if args.out else harness.RESULTS_DIR
    rows = run_suite(Path(args.model), out, dry_run=args.dry_run)
    print(harness.markdown_table(rows))
    if args.dry_run:
        print(f"\n{len(rows)} runs, at most {sum(r['limit_min'] for r in rows)} minutes in all; results under {out}")
    return 0 if all(r.get("status", "ok") == "ok" for r in rows) else 1


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("gpu-suite", help="every study's gpu preset, the kvpress comparison and an lmms-eval sample on one GPU")
    p.add_argument("--model", required=True, help="a local Qwen2.5-VL checkpoint directory")
    p.add_argument("--out", help="where to write the results (default: the package's results/)")
    p.add_argument("--dry-run", action="store_true", help="check the checkpoint and list the runs without starting any")
    p.set_defaults(handler=run_cli)
