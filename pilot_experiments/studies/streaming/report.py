"""Tables, notes and the plot of the streaming study, drawn from its measured summaries."""

from __future__ import annotations

import numpy as np

from pilot_experiments.studies.streaming.stream import BINS

MIB = 2**20


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def rows(runs: dict[str, dict]) -> list[dict]:
    out = []
    for name, r in runs.items():
        row = {
            "policy": name,
            "frames": r["frames_ingested"] if r["out_of_budget_at"] is None else f"{r['frames_ingested']} (out of budget)",
            "resident KV MiB (final)": r["resident_mib_final"],
            "long-term MiB (final)": r["long_term_mib_final"],
            "ms/frame median": r["latency_ms_median"],
            "ms/frame P99": r["latency_ms_p99"],
            "TTFT ms median": r["ttft_ms_median"],
            "moved KiB/question": r["moved_kib_per_question"] if r["moved_kib_per_question"] is not None else "–",
        }
        for b in BINS:
            acc = r["accuracy"][b]
            row[f"acc {b}"] = "–" if acc["accuracy"] is None else f"{acc['accuracy']:.2f} ({acc['n']})"
        row["retrieval hit"] = r["retrieval_hit_rate"] if r["retrieval_hit_rate"] is not None else "–"
        out.append(row)
    return out


def _quality(metrics: dict) -> str:
    names = {"temporal": "temporal", "vqa_vanish-colour": "vanish-colour", "vqa_first": "first", "vqa": "image VQA"}
    parts = [f"{label} {metrics[k]:.2f}" for k, label in names.items() if isinstance(metrics.get(k), (int, float))]
    return ", ".join(parts) + " exact match" if parts else "(no test metrics recorded)"


def _by_length(runs: dict[str, dict], checkpoints: list[int]) -> str:
    head = "| policy | " + " | ".join(f"KV MiB @{c}" for c in checkpoints) + " | " + " | ".join(f"ms/frame @{c}" for c in checkpoints) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(checkpoints))]
    for name, r in runs.items():
        s = r["series"]
        mem, lat = [], []
        for c in checkpoints:
            if c > r["frames_ingested"]:
                mem.append("–")
                lat.append("–")
                continue
            i = max(j for j, f in enumerate(s["frame"]) if f <= c - 1)
            mem.append(f"{(s['resident'][i] + s['long_term'][i]) / MIB:.2f}")
            window = r["latency_ms_full"][max(0, c - 50) : c]
            lat.append(f"{np.median(window):.1f}")
        lines.append(f"| {name} | " + " | ".join(mem) + " | " + " | ".join(lat) + " |")
    return "\n".join(lines)


def _evidence(runs: dict[str, dict], oracle: dict) -> str:
    head = " | ".join(f"evidence held, {b}" for b in BINS)
    lines = [f"| policy | {head} | vanish-colour accuracy when its evidence was held |", "|" + "---|" * (2 + len(BINS))]
    for name, r in runs.items():
        held = [a["correct"] for a in r["answers"] if a["evidence_in_cache"] and a["kind"] == "vanish-colour"]
        when = f"{np.mean(held):.2f} ({len(held)})" if held else "–"
        lines.append(f"| {name} | " + " | ".join(_fmt(r["accuracy"][b]["evidence_in_cache"]) for b in BINS) + f" | {when} |")
    lines.append("| oracle clip (accuracy) | " + " | ".join(_fmt(oracle[b]) for b in BINS) + " | – |")
    return "\n".join(lines)


def notes(metrics: dict, cfg) -> str:
    runs, t = metrics["policies"], metrics["targets"]
    n = cfg.n_frames
    checkpoints = sorted({c for c in (n // 8, n // 4, n // 2, n) if c > 0})
    m = metrics["model"]
    out = [
        (
            f"Stream: {n} frames of {cfg.frame_px}x{cfg.frame_px} px ({metrics['stream']['visual_tokens_per_frame']} visual tokens + "
            f"{metrics['stream']['markers_per_frame']} marker{'s' if metrics['stream']['markers_per_frame'] > 1 else ''} per frame), "
            f"{metrics['stream']['tracks']} object lives; questions per bin {metrics['stream']['questions']} "
            f"(near ≤ {cfg.near_max} frames back, middle ≤ {cfg.middle_max}, far beyond; two-event = which of two shapes appeared first; "
            f"distance min / median / max per bin {metrics['stream']['distance_range']}). "
            + (f"Model: `{m['size']}` trained with preset `{m['train_preset']}`; on the substrate's own test split (6-frame clips) it scores "
             f"{_quality(m['test_metrics'])}. " if "size" in m else f"Model: checkpoint `{m['checkpoint']}` ({m['params']:,} parameters), not trained on SynthVis. ")
            + f"Memory budget {cfg.memory_budget_mib:g} MiB of KV per policy. "
            "`moved KiB/question`: what a question brings back from the long-term store (int8 chunks, as stored; "
            "host-to-device traffic on a GPU). "
            f"Working caches of the bounded policies hold about {cfg.sink_tokens} sink entries + {cfg.window_frames} frames."
        ),
        "",
        "KV memory (working cache + long-term store) and median ingest latency over the 50 frames before each length:",
        "",
        _by_length(runs, checkpoints),
        "",
        (
            "Share of questions whose evidence was in the cache the question was read against "
            "(a visual entry showing each object life the answer rests on), and the model's accuracy when it reads an ideal short clip instead "
            f"(`<bos>`, the evidence frames and the latest frames, {cfg.window_frames} frames in all, as in training):"
        ),
        "",
        _evidence(runs, metrics["oracle_clip_accuracy"]),
        "",
        "Targets (measured on this run):",
        "",
    ]
    growth = t["bounded_memory_flat"]
    out.append("- bounded policies, KV peak in the second half of the stream over the first half after warm-up (1.00 = flat): "
               + ", ".join(f"{k} {_fmt(v)}" for k, v in growth.items()))
    out.append("- bounded policies, median ingest latency in the last quarter over the first quarter after warm-up: "
               + ", ".join(f"{k} {_fmt(v)}" for k, v in t["bounded_latency_growth"].items()))
    fv = t.get("far_vs_full")
    if fv:
        out.append(
            f"- the full cache held {fv['frames_full_cache_holds']} frames before passing the budget; on the {fv['n_far_questions']} far questions asked "
            f"while it fitted, full cache {_fmt(fv['full_far_accuracy'])} vs hierarchical {_fmt(fv['hierarchical_far_accuracy_same_questions'])}; "
            f"at that length the full cache uses {_fmt(fv['resident_ratio_full_over_hierarchical'], 1)}x the hierarchical memory's resident KV "
            f"and {_fmt(fv['total_ratio_full_over_hierarchical'], 1)}x its total KV (long-term store included)."
        )
    out.append("- far-past accuracy on all far questions: " + ", ".join(f"{k} {_fmt(v)}" for k, v in t["far_accuracy_all_questions"].items()))
    out += ["", "Verdicts (accuracy comparisons are judged on 95 % paired bootstrap intervals over the same questions: met when "
            "the whole interval clears the bar, missed when none of it does, not resolved otherwise, and not resolved when they rest "
            f"on fewer than {MIN_FAR_QUESTIONS} questions or the reference's own interval reaches down to chance; memory and "
            "latency targets are single measurements):", ""]
    out += [f"- {v}" for v in verdicts(metrics, cfg.preset)]
    out += [
        "",
        "Survey side by side: the survey (section 6, Table 3) runs no streaming pilot; it states directions, which we test:",
        "",
        "| survey claim | what this run measured |",
        "|---|---|",
        f"| the full KV cache grows without bound on a stream | full cache: {_fmt(runs['full']['peak_kv_mib'] if 'full' in runs else None)} MiB after {runs['full']['frames_ingested'] if 'full' in runs else '–'} frames |",
        "| windows with attention sinks keep a bounded cache (StreamingLLM / StreamingVLM) | see the flatness ratios above |",
        "| retrieval of query-relevant chunks from long-term memory recovers the far past (ReKV, LiveVLM) | "
        + f"hierarchical far accuracy {_fmt(t['far_accuracy_all_questions'].get('hierarchical'))}, retrieval hit rate {_fmt(runs.get('hierarchical', {}).get('retrieval_hit_rate'))} |",
    ]
    return "\n".join(out)


MIN_FAR_QUESTIONS = 30  # below this, an accuracy difference of 0.1-0.2 is inside the sampling noise


def _against(reference: str, short: str, n: int, accuracy: float, reference_accuracy: float, ratio: list | None,
             reference_interval: list | None, verdict: str, chance: float) -> str:
    """One verdict line: the hierarchical memory's far accuracy against a reference on the same questions."""
    return (f"{verdict.upper()}: hierarchical far accuracy >= 80 % of {reference} on the same {n} questions: "
            f"{accuracy:.2f} vs {reference_accuracy:.2f}"
            + (f", ratio {ratio[0]:.2f} ({ratio[1]:.2f} to {ratio[2]:.2f})" if ratio else "")
            + (f"; {short}'s own interval {reference_interval[0]:.2f} to {reference_interval[1]:.2f} against chance {chance:.2f}"
               if reference_interval else ""))


def verdicts(metrics: dict, preset: str) -> list[str]:
    """One line per target of the issue, with the margin by which it is met or missed; a smoke run gives none."""
    if preset == "smoke":
        return ["No verdicts: a smoke run checks that the mechanics work, not whether the targets are met."]
    t, runs = metrics["targets"], metrics["policies"]
    out = []

    def say(ok: bool | None, text: str) -> None:
        out.append(("MET: " if ok else "MISSED: " if ok is not None else "NOT MEASURABLE: ") + text)

    flat = {k: v for k, v in t["bounded_memory_flat"].items() if v is not None}
    say(all(v <= 1.05 for v in flat.values()), f"bounded resident KV flat after warm-up (ratio <= 1.05): worst {max(flat.values()):.2f}")
    work = {k: v for k, v in t["bounded_attended_growth"].items() if v is not None}
    say(all(v <= 1.0 for v in work.values()), f"bounded per-frame ingest work flat in stream length (entries a frame attends, max in the last quarter over the first: <= 1.00): worst {max(work.values()):.2f}")
    lat = t["bounded_latency_growth"]
    say(all(v <= 1.25 for v in lat.values()),
        "bounded per-frame wall-clock latency flat (last/first quarter median <= 1.25; a 2-core machine shared with other jobs, so noisy): "
        + ", ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    fv = t.get("far_vs_full")
    chance = t.get("far_chance_rate")
    if fv and fv["full_far_accuracy"] is not None and fv["hierarchical_far_accuracy_same_questions"] is not None:
        out.append(_against("the full cache's while it fits,", "the full cache", fv["n_far_questions"],
                            fv["hierarchical_far_accuracy_same_questions"], fv["full_far_accuracy"], fv["ratio_interval"],
                            fv["full_interval"], fv["verdict"], chance))
        say(fv["resident_ratio_full_over_hierarchical"] >= 10,
            f">= 10x less resident KV than the full cache at {fv['frames_full_cache_holds']} frames: {fv['resident_ratio_full_over_hierarchical']:.1f}x "
            f"({fv['total_ratio_full_over_hierarchical']:.1f}x counting the long-term store)")
    else:
        say(None, "hierarchical vs full cache on far questions: no far question was asked while the full cache fitted")
    vo = t.get("far_vs_oracle", {}).get("hierarchical")
    if vo and vo["n"]:
        out.append(_against("the oracle clip's (evidence frames + latest frames)", "the oracle", vo["n"], vo["accuracy"],
                            vo["oracle_accuracy"], vo["ratio_interval"], vo["oracle_interval"], vo["verdict"], chance))
    hw = t.get("hierarchical_over_windows")
    if hw:
        gap = hw["difference_interval"]
        out.append(f"{hw['verdict'].upper()}: hierarchical clearly above {hw['baseline']} on far questions (by > 0.10) on the same "
                   f"{hw['n']} questions" + (f": difference {gap[0]:+.2f} ({gap[1]:+.2f} to {gap[2]:+.2f})" if gap else ""))
    hit = runs.get("hierarchical", {}).get("retrieval_hit_rate")
    if hit is not None:
        out.append(f"retrieval brought back the evidence for {hit:.0%} of the questions whose evidence had left the working window")
    return out


def plot(runs: dict[str, dict]):
    def draw(fig) -> None:
        ax_mem, ax_lat, ax_acc = fig.subplots(1, 3)
        for name, r in runs.items():
            s = r["series"]
            total = (np.array(s["resident"]) + np.array(s["long_term"])) / MIB
            ax_mem.plot(s["frame"], total, label=name)
            lat = np.array(r["latency_ms_full"])
            k = min(25, len(lat))
            smooth = np.convolve(lat, np.ones(k) / k, mode="valid")
            ax_lat.plot(np.arange(len(smooth)) + k, smooth, label=name)
        ax_mem.set(xlabel="frames ingested", ylabel="KV MiB (working + long-term)", yscale="log", title="memory vs stream length")
        ax_lat.set(xlabel="frames ingested", ylabel="ms per frame (running mean of 25)", yscale="log", title="ingest latency vs stream length")
        width = 0.8 / max(1, len(runs))
        for i, (name, r) in enumerate(runs.items()):
            accs = [r["accuracy"][b]["accuracy"] for b in BINS]
            ax_acc.bar(np.arange(len(BINS)) + i * width, [a if a is not None else 0 for a in accs], width, label=name)
        ax_acc.set_xticks(np.arange(len(BINS)) + 0.4 - width / 2, BINS)
        ax_acc.set(ylabel="exact match", ylim=(0, 1), title="accuracy by distance")
        ax_mem.legend(fontsize=7)

    return draw
