"""`python -m pilot_experiments relaxed-spec --preset smoke|cpu|gpu` (argument parsing only)."""

from __future__ import annotations

from pathlib import Path

from pilot_experiments import harness
from pilot_experiments.studies.relaxed_spec.study import config_for, run

STUDY = "relaxed-spec"


def run_cli(args) -> int:
    cfg = config_for(harness.check_preset(args.preset))
    device = harness.pick_device(args.preset)
    path = harness.run_study(STUDY, args.preset, lambda c: run(c, device), cfg, seed=cfg.seed, device=device, results_dir=Path(args.results_dir))
    print(f"results: {path}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(STUDY, help="speculative decoding with relaxed (random, typical, modality-aware) verification; survey Tables 9-10")
    p.add_argument("--preset", choices=list(harness.PRESETS), default="cpu")
    p.add_argument("--results-dir", default=str(harness.RESULTS_DIR), help="where to write results (default: the package's results/)")
    p.set_defaults(handler=run_cli)
