"""`bench-kv-read`: what one decode step's attention costs in memory over a quantized KV cache.

Two ways to attend a layer whose older entries sit in int8 or int4 blocks: `LayerCache.read`, which
hands the model every entry dequantized (the only way before `LayerCache.attend`), and
`LayerCache.attend`, which dequantizes `QUANT_CHUNK` entries at a time inside the attention. Each way
runs in a fresh process that builds the cache block by block (so building it never holds the
full-precision cache), then measures the peak memory one decode step adds: the process's peak
resident set on a CPU, CUDA's peak allocation on a GPU. Time per step is the median over repeats.
Writes bench-results/kv-read.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from pilot_experiments import harness, kvcache
from pilot_experiments.fast_decode import BENCH_DIR
from pilot_experiments.kvcache import VISUAL, LayerCache

WAYS = ("read", "attend")
BUILD_BLOCK = 4096  # entries quantized at a time while building the cache


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's resident high-water mark (clear_refs 5)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def current_and_peak(device: torch.device) -> tuple[int, int]:
    """(bytes in use, peak bytes since `reset_peak`): allocated CUDA memory, or VmRSS / VmHWM on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return (int(status[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM"))


def build_layer(entries: int, bits: int, kv_heads: int, head_dim: int, device: torch.device) -> LayerCache:
    """One layer holding `entries` quantized visual entries (built BUILD_BLOCK at a time) and one new hot entry."""
    layer = LayerCache(1, kv_heads, head_dim, torch.float32, device, BUILD_BLOCK, "cpu")
    generator = torch.Generator(device="cpu").manual_seed(0)
    for start in range(0, entries, BUILD_BLOCK):
        n = min(BUILD_BLOCK, entries - start)
        keys, values = (torch.randn(1, kv_heads, n, head_dim, generator=generator).to(device) for _ in range(2))
        meta = (torch.arange(start, start + n, device=device).view(1, -1),
                torch.full((1, n), VISUAL, dtype=torch.uint8, device=device), torch.zeros(1, n, dtype=torch.long, device=device))
        layer.append(keys, values, *meta)
        layer.quantize(torch.ones(1, kv_heads, layer.length, dtype=torch.bool, device=device), bits)
        del keys, values
    new = (torch.tensor([[entries]], device=device), torch.zeros(1, 1, dtype=torch.uint8, device=device),
           torch.zeros(1, 1, dtype=torch.long, device=device))
    layer.append(torch.randn(1, kv_heads, 1, head_dim, device=device), torch.randn(1, kv_heads, 1, head_dim, device=device), *new)
    return layer


def step(layer: LayerCache, query: torch.Tensor, way: str) -> torch.Tensor:
    scale = query.shape[-1] ** -0.5
    if way == "attend":
        return layer.attend(query, 1, scale)
    keys, values, mask = layer.read(1)
    group = query.shape[1] // keys.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=group > 1)


def measure(way: str, entries: int, bits: int, kv_heads: int, heads: int, head_dim: int, repeats: int, device: str) -> dict:
    """Runs in its own process: the peak memory one step of `way` adds, and its time."""
    dev = torch.device(device)
    layer = build_layer(entries, bits, kv_heads, head_dim, dev)
    query = torch.randn(1, heads, 1, head_dim, device=dev)
    if dev.type == "cuda":
        step(layer, query, way)  # warm-up: kernel selection; the allocator's peak is reset below
    reset_peak(dev)
    before, _ = current_and_peak(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(layer, query, way)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(1000 * (time.perf_counter() - start))
    _, peak = current_and_peak(dev)
    return {"way": way, "at_rest_bytes": layer.resident_bytes(), "step_peak_bytes": peak - before,
            "ms_median": statistics.median(times), "ms_q1": statistics.quantiles(times, n=4)[0],
            "ms_q3": statistics.quantiles(times, n=4)[2]}


def run_isolated(way: str, args: argparse.Namespace) -> dict:
    call = (f"import json; from pilot_experiments.kv_memory import measure; print(json.dumps(measure("
            f"{way!r}, {args.entries}, {args.bits}, {args.kv_heads}, {args.heads}, {args.head_dim}, {args.repeats}, "
            f"{args.device!r})))")
    done = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the {way} measurement failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def markdown(record: dict) -> str:
    mib = 2**20
    rows = {r["way"]: r for r in record["results"]}
    lines = ["<!-- generated by `python -m pilot_experiments bench-kv-read`; do not edit -->",
             f"# One decode step over a quantized KV cache ({record['device']})", "",
             f"One layer, {record['entries']:,} entries in int{record['bits']} blocks ({record['kv_heads']} KV heads, "
             f"{record['heads']} query heads, head_dim {record['head_dim']}): "
             f"{rows['attend']['at_rest_bytes'] / mib:.1f} MiB at rest, "
             f"{record['full_precision_bytes'] / mib:.1f} MiB if it were float32. Each way runs in a fresh process; "
             "'step peak' is the most memory a step adds to what the process holds before it (peak resident set on a "
             "CPU, with the high-water mark reset after building the cache; peak CUDA allocation after a warm-up step on a "
             "GPU); time is the "
             "median over repeats (25th-75th percentile).", "",
             "| way | step peak MiB | ms per step |", "|---|---|---|"]
    for way in WAYS:
        r = rows[way]
        lines.append(f"| `{way}` | {r['step_peak_bytes'] / mib:.1f} | {r['ms_median']:.2f} ({r['ms_q1']:.2f}-{r['ms_q3']:.2f}) |")
    read, attend = rows["read"], rows["attend"]
    lines += ["", f"A step that dequantizes every block (`read`) adds {read['step_peak_bytes'] / mib:.1f} MiB, "
                  f"{read['step_peak_bytes'] / record['full_precision_bytes']:.1f}x the float32 size of the cache; "
                  f"attending chunk by chunk ({record['quant_chunk']} entries at a time, `attend`) adds "
                  f"{attend['step_peak_bytes'] / mib:.1f} MiB and takes {attend['ms_median'] / read['ms_median']:.2f}x the time."]
    return "\n".join(lines) + "\n"


def run_cli(args: argparse.Namespace) -> int:
    results = [run_isolated(way, args) for way in WAYS]
    device = harness.device_name(torch.device(args.device)) if args.device != "cpu" else harness.device_name(torch.device("cpu"))
    record = {"device": f"{device}, torch {torch.__version__}", "git_commit": harness.git_commit(),
              "entries": args.entries, "bits": args.bits, "kv_heads": args.kv_heads, "heads": args.heads,
              "head_dim": args.head_dim, "quant_chunk": kvcache.QUANT_CHUNK,
              "full_precision_bytes": 2 * args.entries * args.kv_heads * args.head_dim * 4, "results": results}
    print(json.dumps(record, indent=2) if args.json else markdown(record))
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kv-read.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "kv-read.md").write_text(markdown(record))
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("bench-kv-read", help="peak memory of one decode step over a quantized KV cache")
    parser.add_argument("--entries", type=int, default=65536, help="quantized entries in the layer (default 65536)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--heads", type=int, default=32, help="query heads, a multiple of --kv-heads (default 32)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.add_argument("--out", default=str(BENCH_DIR), help="where kv-read.json and kv-read.md go (default: bench-results/)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.set_defaults(handler=run_cli)
