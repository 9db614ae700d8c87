"""`python -m pilot_experiments streaming --preset smoke|cpu|gpu` (argument parsing only)."""

from __future__ import annotations

from pathlib import Path

from pilot_experiments import harness
from pilot_experiments.studies.streaming.study import config_for, run_streaming

STUDY = "streaming"


def run_cli(args) -> int:
    overrides = {k: v for k, v in {"n_frames": args.frames, "seed": args.seed, "model_size": args.model}.items() if v is not None}
    cfg = config_for(harness.check_preset(args.preset), **overrides)
    path = harness.run_study(STUDY, args.preset, run_streaming, cfg, seed=cfg.seed, results_dir=Path(args.results_dir))
    print(f"results: {path}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(STUDY, help="KV policies for an unbounded video stream: memory, latency and accuracy by distance (survey section 6)")
    p.add_argument("--preset", choices=list(harness.PRESETS), default="cpu")
    p.add_argument("--frames", type=int, help="stream length in frames (default: the preset's)")
    p.add_argument("--seed", type=int, help="stream seed (default: the preset's)")
    p.add_argument("--model", choices=["draft", "target", "large"], help="model size, trained with the preset's training preset (default: the preset's)")
    p.add_argument("--results-dir", default=str(harness.RESULTS_DIR), help="where to write results (default: the package's results/)")
    p.set_defaults(handler=run_cli)
