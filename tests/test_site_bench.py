"""The site benchmark's size accounting (the builds themselves run in `python -m tools bench --site`)."""

from __future__ import annotations

import gzip
from pathlib import Path

from tools import site_bench


def write(path: Path, text: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def test_explore_cost_counts_the_page_its_data_and_the_local_assets_it_loads(tmp_path):
    html = ('<link rel="stylesheet" href="../assets/site.css"><script src="../assets/explore.js"></script>'
            '<script src="https://cdn.example.org/never-counted.js"></script><img src="../big.png">')
    expected = write(tmp_path / "explore" / "index.html", html)
    expected += write(tmp_path / "assets" / "data" / "explore.json", '{"rows": []}' * 50)
    expected += write(tmp_path / "assets" / "site.css", "body{}" * 100)
    expected += write(tmp_path / "assets" / "explore.js", "var x;" * 100)
    write(tmp_path / "big.png", "x" * 10_000)
    cost = site_bench.explore_cost(tmp_path)
    assert cost["files"] == 4
    assert cost["bytes"] == expected
    assert cost["data_bytes"] == len('{"rows": []}' * 50)
    assert 0 < cost["gzip_bytes"] < cost["bytes"]
    assert cost["gzip_bytes"] >= len(gzip.compress(html.encode()))


def test_verdicts_follow_the_targets():
    def row(seconds, explore_bytes):
        return {"build_s": seconds, "explore": {"bytes": explore_bytes}}

    assert site_bench.verdicts([row(19.9, 999_999), row(59.9, 10)]) == {
        "real_build_under_20_s": True, "synthetic_build_under_60_s": True, "explore_under_1_mb": True}
    assert site_bench.verdicts([row(20.0, 10), row(61, 1_000_000)]) == {
        "real_build_under_20_s": False, "synthetic_build_under_60_s": False, "explore_under_1_mb": False}
