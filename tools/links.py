"""`check-links`: fetch every web address the paper files give and report the dead ones.

Requests run concurrently (asyncio + httpx) with a bound on how many are in flight, a timeout per request
and retries with backoff for answers that may be temporary (timeouts, connection errors, 429, 5xx).
A link is dead when it still fails after the retries, or answers a 4xx status other than 429.
Exit status: 0 when every link answered, 1 when some are dead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tools.repository import Repository, load_repository

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "efficient-lvlm-inference-link-checker/1.0 (+https://github.com/efficient-lvlm/efficient-lvlm-inference)"


@dataclass(frozen=True)
class LinkResult:
    """What one URL answered: its final HTTP status, or the error that stopped it, after `attempts` tries."""

    url: str
    status: int | None
    error: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


def paper_urls(repo: Repository) -> dict[str, list[str]]:
    """Every URL in the paper files (url, code, project_page, and the arXiv and DOI pages) -> the papers giving it."""
    urls: dict[str, list[str]] = defaultdict(list)
    for paper in repo.papers:
        for value in (paper.url, paper.code, paper.project_page):
            if value:
                urls[str(value)].append(paper.id)
        if paper.arxiv:
            urls[f"https://arxiv.org/abs/{paper.arxiv}"].append(paper.id)
        if paper.doi:
            urls[f"https://doi.org/{paper.doi}"].append(paper.id)
    return dict(urls)


async def check_url(client: httpx.AsyncClient, url: str, retries: int, backoff: float) -> LinkResult:
    """GET one URL (headers only: the body is never read), retrying answers that may be temporary."""
    status: int | None = None
    error: str | None = None
    for attempt in range(1, retries + 2):
        try:
            async with client.stream("GET", url) as response:
                status, error = response.status_code, None
        except httpx.TimeoutException:
            status, error = None, "timed out"
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status is not None and status not in RETRY_STATUSES:
            return LinkResult(url, status, None, attempt)
        if attempt <= retries:
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
    return LinkResult(url, status, error, retries + 1)


async def check_urls(
    urls: Iterable[str],
    *,
    concurrency: int = 8,
    timeout: float = 15.0,
    retries: int = 2,
    backoff: float = 1.0,
    on_done: Callable[[LinkResult], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[LinkResult]:
    """Check `urls` with at most `concurrency` requests in flight; results in the order of `urls`."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=True,
        limits=limits,
        headers={"User-Agent": USER_AGENT},
        transport=transport,
    ) as client:

        async def one(url: str) -> LinkResult:
            async with limit:
                result = await check_url(client, url, retries, backoff)
            if on_done:
                on_done(result)
            return result

        return list(await asyncio.gather(*(one(url) for url in urls)))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-links",
        help="check every URL in the paper files and report the dead ones",
        description="Fetch every web address of every paper (url, code, project page, arXiv and DOI pages) with "
                    "bounded concurrency, a timeout and retries; print the dead ones with the files that give "
                    "them. Exit 1 when any link is dead.",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per request (default 15)")
    parser.add_argument("--retries", type=int, default=2,
                        help="extra tries for timeouts, connection errors, 429 and 5xx (default 2)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repo = load_repository(args.root)
    urls = paper_urls(repo)
    with Progress(
        TextColumn("checking links"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=True, disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("links", total=len(urls))
        results = asyncio.run(check_urls(
            urls, concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
            on_done=lambda _: progress.advance(task),
        ))
    dead = [result for result in results if not result.ok]
    for result in sorted(dead, key=lambda r: r.url):
        why = f"HTTP {result.status}" if result.status is not None else result.error
        files = ", ".join(f"papers/{paper_id}.yaml" for paper_id in urls[result.url])
        print(f"dead: {result.url} ({why}, {result.attempts} tries) in {files}")
    print(f"{len(results) - len(dead)} of {len(results)} links answered; {len(dead)} dead")
    return 1 if dead else 0
