"""How fast is one poll cycle, next to bare feedparser and to lemon24's reader?

Serves a deterministic corpus (``bench/corpus.py``: 500 feeds by default) from 127.0.0.1 and
measures, as medians of ``--repeat`` runs with min and max:

- **floor**: bare ``feedparser.parse`` with default settings over the same bytes, one process;
- **cold**: one full cycle (fetch, parse, match, dedupe, store, enqueue alerts) on an empty
  database. Sending is off (``Deps.outbox=None``): enqueueing the alert is the end of the line;
- **warm**: the next cycle with nothing changed (304s, and unchanged bodies recognised by hash);
- **churn**: the next cycle after 10% of the feeds gained 3 items each;
- **peak RSS** of the cold cycle, parse workers included (see :func:`tree_peak_rss`);
- **peer**: reader's ``update_feeds(workers=N)`` over the same URLs, cold then warm, run in its
  own virtualenv (``bench/.venv-reader``; ``make bench`` makes it).

Our cycles run in a child process that holds nothing but the pipeline, so its memory is the
pipeline's; the corpus and the server live in this process. Prints a table, or one JSON object
with ``--json``.

    .venv/bin/python bench/bench_cycle.py [--feeds 500] [--repeat 3] [--json] [--peer auto]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.corpus import NOW, CorpusServer, build_corpus, churn_indices  # noqa: E402

READER_PYTHON = ROOT / "bench" / ".venv-reader" / "bin" / "python"
CHURN_SHARE = 0.1
CHURN_ITEMS = 3
WARM_AFTER = timedelta(minutes=10)
CHURN_AFTER = timedelta(minutes=20)
TARGETS = {
    "cold_over_floor": ("<=", 0.6),
    "warm_parses": ("<=", 0),
    "warm_seconds": ("<=", 2.0),  # at 500 feeds
    "peak_rss_mb": ("<=", 150.0),
    "reader_cold_over_cold": (">=", 3.0),
}


# -- the parent: corpus, server, floor, peer, summary ---------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians need >= 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--peer",
        choices=("auto", "skip", "require"),
        default="auto",
        help="run reader when its venv exists (auto), never, or fail without it",
    )
    parser.add_argument("--reader-workers", type=int, default=16, help="reader's threads")
    parser.add_argument("--parse-workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)

    peer = args.peer == "require" or (args.peer == "auto" and READER_PYTHON.exists())
    if peer and not READER_PYTHON.exists():
        parser.error(f"--peer require: {READER_PYTHON} is missing (run `make bench` once)")

    corpus = build_corpus(args.feeds)
    results: dict[str, list[float]] = {}
    cycles: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    with CorpusServer(corpus) as server, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bodies = list(server.bodies)
        urls = server.urls
        for _ in range(args.repeat):
            results.setdefault("floor", []).append(measure_floor(bodies))
        for rep in range(args.repeat):
            server.reset(corpus)
            cycles.append(run_ours(server, urls, Path(tmp) / f"ours-{rep}", args.parse_workers))
        if peer:
            server.reset(corpus)
            url_file = Path(tmp) / "urls.txt"
            url_file.write_text("\n".join(urls) + "\n", encoding="utf-8")
            for rep in range(args.repeat):
                peers.append(run_peer(url_file, Path(tmp) / f"reader-{rep}.sqlite", args))
    summary = summarise(args, corpus_stats(corpus, bodies), results["floor"], cycles, peers)
    print(json.dumps(summary, indent=2) if args.json else table(summary))
    return 0


def measure_floor(bodies: list[bytes]) -> float:
    """Bare feedparser, default settings, one process. A stream, as bytes would be a file name."""
    import feedparser

    if getattr(feedparser, "_aggregator_tuned", False):  # see aggregator/ingest/tuning.py
        raise RuntimeError("the floor must be bare feedparser, but this process has tuned it")
    started = time.perf_counter()
    for body in bodies:
        feedparser.parse(io.BytesIO(body))
    return time.perf_counter() - started


def run_ours(
    server: CorpusServer, urls: list[str], workdir: Path, parse_workers: int
) -> dict[str, Any]:
    """Cold, warm and churn cycles in a fresh child process on a fresh database."""
    config_dir = write_config(workdir, urls)
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({"config": str(config_dir), "parse_workers": parse_workers}))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    phases: dict[str, Any] = {}
    try:
        for phase in ("cold", "warm"):
            phases[phase] = _read_phase(proc, phase)
        server.churn(churn_indices(len(urls), CHURN_SHARE), CHURN_ITEMS, NOW + CHURN_AFTER)
        proc.stdin.write("churn\n")
        proc.stdin.flush()
        phases["churn"] = _read_phase(proc, "churn")
    finally:
        proc.stdin.close()
        code = proc.wait(timeout=120)
    if code != 0:
        raise RuntimeError(f"benchmark child exited with {code}")
    return phases


def _read_phase(proc: subprocess.Popen[str], phase: str) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark child died before reporting the {phase} cycle")
    data: dict[str, Any] = json.loads(line)
    if data.get("phase") != phase:
        raise RuntimeError(f"expected the {phase} cycle, got {line!r}")
    return data


def write_config(workdir: Path, urls: list[str]) -> Path:
    directory = workdir / "config"
    directory.mkdir(parents=True)
    shipped = (ROOT / "config" / "topics.toml").read_text(encoding="utf-8")
    (directory / "topics.toml").write_text(shipped, encoding="utf-8")
    (directory / "models").symlink_to(ROOT / "config" / "models", target_is_directory=True)
    (directory / "aggregator.toml").write_text(
        f'[storage]\ndatabase = "{workdir / "bench.db"}"\n'
        '[polling]\ninterval = "60s"\njitter = 0\n[fetch]\nallow_private = true\n',
        encoding="utf-8",
    )
    feeds = [f'[[feeds]]\nurl = "{url}"\nname = "Outlet {i}"\n' for i, url in enumerate(urls)]
    (directory / "feeds.toml").write_text("\n".join(feeds), encoding="utf-8")
    return directory


def run_peer(url_file: Path, db: Path, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.run(
        [
            str(READER_PYTHON),
            str(ROOT / "bench" / "peer_reader.py"),
            "--urls",
            str(url_file),
            "--db",
            str(db),
            "--workers",
            str(args.reader_workers),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reader peer failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- the child: the pipeline and nothing else -----------------------------------------------------


def child(spec_path: Path) -> int:
    """Run cold, warm and churn cycles; print one JSON line per cycle."""
    from aggregator.config.load import load_config
    from aggregator.ingest.fetch import Fetcher
    from aggregator.ingest.workers import ParsePool
    from aggregator.pipeline import Deps, run_cycle
    from aggregator.relevance.tiers import load_models
    from aggregator.rules.matcher import TopicMatcher
    from aggregator.service.memory import limit_malloc_arenas
    from aggregator.store import Store

    limit_malloc_arenas()  # as the service does at start (``Runtime``)
    spec = json.loads(spec_path.read_text())
    config = load_config(Path(spec["config"]), {})
    store = Store.open(config.settings.database)
    store.feeds.sync(config.feeds, NOW)
    with ParsePool(spec["parse_workers"]) as pool, Fetcher(config.settings) as fetcher:
        pool.start()  # as the service does at start (``Runtime``)
        deps = Deps(
            config=config,
            store=store,
            fetcher=fetcher,
            parser=pool,
            matcher=TopicMatcher.compile(config.topics),
            scoring=load_models(config.topics),  # the shipped models score what the rules catch
            outbox=None,  # enqueue alerts, send nothing
            rng=random.Random(7),
        )
        for phase, now in (("cold", NOW), ("warm", NOW + WARM_AFTER), ("churn", NOW + CHURN_AFTER)):
            if phase == "churn" and sys.stdin.readline().strip() != "churn":
                return 1
            store.feeds.make_all_due(now)
            sampler = TreeSampler(os.getpid()) if phase == "cold" else None
            started = time.perf_counter()
            report = run_cycle(deps, now)
            seconds = time.perf_counter() - started
            line: dict[str, Any] = {
                "phase": phase,
                "seconds": seconds,
                "parses": report.parses,
                "fetched": report.count("fetched"),
                "unchanged": report.count("unchanged"),
                "failed": report.count("failed"),
                "new_entries": report.new_entries,
                "matched": report.matched,
                "alerts": report.alerts,
            }
            if sampler is not None:
                line |= tree_peak_rss() | sampler.stop()
            print(json.dumps(line), flush=True)
    store.close()
    return 0


def tree_peak_rss() -> dict[str, Any]:
    """Peak RSS of this process plus every live descendant (the parse workers).

    Each process's own peak is its ``VmHWM``; their sum is an upper bound of the peak of the
    whole tree (the peaks need not coincide, and shared library pages count once per process).
    ``getrusage(RUSAGE_CHILDREN)`` would not do: it reports the largest single child, and only
    once that child has exited and been waited for, while the pool's workers live on.
    """
    me = os.getpid()
    own = _hwm_kib(me) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = [_hwm_kib(pid) for pid in _descendants(me)]
    total = own + sum(children)
    return {
        "peak_rss_mb": round(total / 1024, 1),
        "main_rss_mb": round(own / 1024, 1),
        "child_rss_mb": [round(kib / 1024, 1) for kib in children],
    }


class TreeSampler:
    """Samples the process tree's summed RSS and PSS every ``interval`` seconds, in a thread.

    PSS splits each shared page between the processes that map it (the forked workers share
    the interpreter and its imports), so summed PSS is close to what the machine, and systemd's
    ``MemoryMax``, actually spend; summed RSS counts shared pages once per process. Sampling can
    miss a short spike, which is why the reported ``peak_rss_mb`` is the sum of per-process peaks.
    """

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root = root
        self.interval = interval
        self.peak_pss_kib = 0
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample(_descendants(self.root))
        return {
            "sampled_peak_pss_mb": round(self.peak_pss_kib / 1024, 1),
            "sampled_peak_rss_sum_mb": round(self.peak_rss_kib / 1024, 1),
        }

    def _run(self) -> None:
        tree: list[int] = []
        ticks = 0
        while not self._stop.wait(self.interval):
            if ticks % 5 == 0:  # the tree changes rarely; scanning /proc costs more than sampling
                tree = _descendants(self.root)
            self._sample(tree)
            ticks += 1

    def _sample(self, tree: list[int]) -> None:
        pss = rss = 0
        for pid in (self.root, *tree):
            fields = _rollup_kib(pid)
            pss += fields.get("Pss", 0)
            rss += fields.get("Rss", 0)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)


def _rollup_kib(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name in ("Rss", "Pss") and parts and parts[0].isdigit():
            found[name] = int(parts[0])
    return found


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces: the fields after its closing paren are fixed
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(kids)
        frontier.extend(kids)
    return sorted(found)


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- the summary ----------------------------------------------------------------------------------


def corpus_stats(corpus: list[Any], bodies: list[bytes]) -> dict[str, Any]:
    return {
        "corpus_mb": round(sum(map(len, bodies)) / 1e6, 1),
        "items": sum(len(f.items) for f in corpus),
        "on_topic_items": sum(i.on_topic for f in corpus for i in f.items),
        "atom_feeds": sum(f.kind == "atom" for f in corpus),
        "feeds_without_validators": sum(f.validators == "none" for f in corpus),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def summarise(
    args: argparse.Namespace,
    corpus: dict[str, Any],
    floor: list[float],
    cycles: list[dict[str, Any]],
    peers: list[dict[str, Any]],
) -> dict[str, Any]:
    def phase(name: str, key: str = "seconds") -> list[float]:
        return [float(c[name][key]) for c in cycles]

    out: dict[str, Any] = {
        "feeds": args.feeds,
        "cores": os.cpu_count(),
        "repetitions": args.repeat,
        "parse_workers": args.parse_workers or os.cpu_count(),
        **corpus,
        "floor": spread(floor),
        "cold": spread(phase("cold")),
        "warm": spread(phase("warm")),
        "churn": spread(phase("churn")),
    }
    cold = statistics.median(phase("cold"))
    out |= {
        "floor_seconds": out["floor"]["median"],
        "cold_seconds": out["cold"]["median"],
        "warm_seconds": out["warm"]["median"],
        "churn_seconds": out["churn"]["median"],
        "cold_over_floor": round(cold / statistics.median(floor), 3),
        "churn_over_cold": round(statistics.median(phase("churn")) / cold, 3),
        "floor_ms_per_feed": round(1000 * statistics.median(floor) / args.feeds, 2),
        "cold_ms_per_feed": round(1000 * cold / args.feeds, 2),
        "cold_parses": int(max(phase("cold", "parses"))),
        "warm_parses": int(max(phase("warm", "parses"))),
        "churn_parses": int(max(phase("churn", "parses"))),
        "cold_new_entries": int(max(phase("cold", "new_entries"))),
        "cold_alerts": int(max(phase("cold", "alerts"))),
        "churn_new_entries": int(max(phase("churn", "new_entries"))),
        "churn_alerts": int(max(phase("churn", "alerts"))),
        "failed_fetches": int(sum(sum(c[p]["failed"] for p in c) for c in cycles)),
        "peak_rss_mb": max(c["cold"]["peak_rss_mb"] for c in cycles),
        "sampled_peak_pss_mb": max(c["cold"]["sampled_peak_pss_mb"] for c in cycles),
        "sampled_peak_rss_sum_mb": max(c["cold"]["sampled_peak_rss_sum_mb"] for c in cycles),
        "peak_rss_parts_mb": max(
            (
                {"main": c["cold"]["main_rss_mb"], "children": c["cold"]["child_rss_mb"]}
                for c in cycles
            ),
            key=lambda parts: parts["main"] + sum(parts["children"]),
        ),
    }
    if peers:
        reader_cold = [float(p["cold_seconds"]) for p in peers]
        reader_warm = [float(p["warm_seconds"]) for p in peers]
        out |= {
            "reader_workers": args.reader_workers,
            "reader_cold": spread(reader_cold),
            "reader_warm": spread(reader_warm),
            "reader_cold_seconds": round(statistics.median(reader_cold), 3),
            "reader_warm_seconds": round(statistics.median(reader_warm), 3),
            "reader_cold_over_cold": round(statistics.median(reader_cold) / cold, 2),
            "reader_warm_over_warm": round(
                statistics.median(reader_warm) / statistics.median(phase("warm")), 2
            ),
            "reader_entries": int(max(p["entries"] for p in peers)),
            "reader_broken_feeds": int(max(p["broken_feeds"] for p in peers)),
        }
    out["targets"] = {
        name: {"target": f"{op} {limit}", "value": out[name], "met": _met(out[name], op, limit)}
        for name, (op, limit) in TARGETS.items()
        if name in out
    }
    return out


def _met(value: float, op: str, limit: float) -> bool:
    return value <= limit if op == "<=" else value >= limit


def table(s: dict[str, Any]) -> str:
    lines = [
        f"{s['feeds']} feeds, {s['items']:,} items, {s['corpus_mb']} MB; {s['cores']} cores, "
        f"{s['parse_workers']} parse workers; {s['repetitions']} repetitions",
        "",
        f"{'phase':<24}{'median s':>10}{'min s':>10}{'max s':>10}  notes",
    ]
    rows = [
        ("floor (bare feedparser)", "floor", f"{s['floor_ms_per_feed']} ms/feed"),
        ("cold cycle", "cold", f"{s['cold_ms_per_feed']} ms/feed, {s['cold_parses']} parses, "
                               f"{s['cold_new_entries']:,} entries, {s['cold_alerts']} alerts"),
        ("warm cycle", "warm", f"{s['warm_parses']} parses"),
        ("churn cycle", "churn", f"{s['churn_parses']} parses, {s['churn_new_entries']} entries, "
                                 f"{s['churn_alerts']} alerts"),
    ]  # fmt: skip
    if "reader_cold" in s:
        rows += [
            ("reader cold", "reader_cold", f"{s['reader_workers']} workers"),
            ("reader warm", "reader_warm", ""),
        ]
    for label, key, note in rows:
        v = s[key]
        lines.append(f"{label:<24}{v['median']:>10.3f}{v['min']:>10.3f}{v['max']:>10.3f}  {note}")
    lines.append("")
    lines.append(f"peak RSS of the cold cycle: {s['peak_rss_mb']} MB {s['peak_rss_parts_mb']}")
    lines.append(
        f"sampled tree peak: PSS {s['sampled_peak_pss_mb']} MB, "
        f"RSS {s['sampled_peak_rss_sum_mb']} MB"
    )
    for name, t in s["targets"].items():
        lines.append(f"{name:<24}{t['value']!s:>10}  target {t['target']:<8} "
                     f"{'met' if t['met'] else 'NOT MET'}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
