"""`python -m pilot_experiments streaming --preset smoke|cpu|gpu [--size SIZE | --model PATH]` (argument parsing only)."""

from __future__ import annotations

from pathlib import Path

from pilot_experiments import harness
from pilot_experiments.studies.streaming.study import config_for, run_streaming

STUDY = "streaming"


def run_cli(args) -> int:
    study, device = harness.checkpoint_run(args, STUDY)
    overrides = {"n_frames": args.frames, "seed": args.seed, "model_size": args.size, "model": args.model, "dtype": args.dtype}
    cfg = config_for(harness.check_preset(args.preset), device=str(device), **{k: v for k, v in overrides.items() if v is not None})
    path = harness.run_study(study, args.preset, run_streaming, cfg, seed=cfg.seed, device=device, results_dir=Path(args.results_dir))
    print(f"results: {path}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(STUDY, help="KV policies for an unbounded video stream: memory, latency and accuracy by distance (survey section 6)")
    p.add_argument("--preset", choices=list(harness.PRESETS), default="cpu")
    p.add_argument("--frames", type=int, help="stream length in frames (default: the preset's)")
    p.add_argument("--seed", type=int, help="stream seed (default: the preset's)")
    p.add_argument("--size", choices=["draft", "target", "large"], help="reference model size, trained with the preset's training preset (default: the preset's)")
    harness.add_checkpoint_arguments(p)
    p.set_defaults(handler=run_cli)
