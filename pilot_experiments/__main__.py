"""Command line: `python -m pilot_experiments <command> ...` (argument parsing only).

Each command lives in its own module, which exposes `register_cli(subparsers)`; to add a command,
import its module and list its `register_cli` in `COMMANDS`. Errors a user can fix from the
command line (a checkpoint path, a preset without its device, an option that needs another) end
the run with their message and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from pilot_experiments import fast_decode, gpu_suite, kv_memory, roofline, train
from pilot_experiments.backends import BackendError, real_checkpoints
from pilot_experiments.harness import HarnessError
from pilot_experiments.lmms import task as lmms_task
from pilot_experiments.studies.hybrid_kv import study as hybrid_kv
from pilot_experiments.studies.relaxed_spec import cli as relaxed_spec
from pilot_experiments.studies.relaxed_spec.study import StudyError
from pilot_experiments.studies.serving import study as serving
from pilot_experiments.studies.streaming import cli as streaming

COMMANDS = [
    train.register_cli,
    roofline.register_cli,
    hybrid_kv.register_cli,
    relaxed_spec.register_cli,
    streaming.register_cli,
    serving.register_cli,
    real_checkpoints.register_cli,
    fast_decode.register_cli,
    kv_memory.register_cli,
    lmms_task.register_cli,
    gpu_suite.register_cli,
]

USAGE_ERRORS = (BackendError, HarnessError, StudyError, train.TrainingError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilot_experiments", description="Pilot experiments on the reference LVLM and SynthVis.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USAGE_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
