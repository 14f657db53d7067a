"""`python -m bench [WORKLOAD ...]`: each workload 3 times, each time in a fresh process and
a fresh SQLite file; prints one JSON line per workload with the median and the peak memory.

    python -m bench            # every workload (bench/workloads.py, bench/large.py)
    python -m bench W2 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile

WORKLOADS = [
    "W1",
    "W2",
    "W2-large",
    "W3",
    "W-map-10k",
    "W4",
    "W-chain-20k",
    "W-chain-20k-watched",
    "W-map-200k",
    "W-map-200k-watched",
    "W-stream",
    "W-cancel",
    "W-reload",
    "W-reload-open",
]
KEY = {
    "W-chain-20k": "ms_per_node",
    "W-chain-20k-watched": "ms_per_node",
    "W-map-200k": "us_per_child",
    "W-map-200k-watched": "us_per_child",
    "W-stream": "close_p99_ms",
    "W-cancel": "cancel_wide_ms",
    "W-reload": "load_open_ms",
    "W-reload-open": "apply_ms",
    "W4": "dispatch_p99_ms",
    "W1": "ms_per_node",
    "W2": "nodes_per_s",
    "W2-large": "nodes_per_s",
    "W3": "makespan_s",
    "W-map-10k": "us_per_child",
}


def once(name: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-m", "bench.one", name, f"{tmp}/bench.db"],
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=WORKLOADS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name in args.workloads:
        samples = [once(name) for _ in range(args.repeat)]
        key = KEY[name]
        values = [float(s[key]) for s in samples]  # type: ignore[arg-type]
        median = statistics.median(values)
        best = min(samples, key=lambda s: abs(float(s[key]) - median))  # type: ignore[arg-type]
        line = {
            "workload": name,
            **best,
            f"{key}_samples": values,
            "peak_rss_mb": max(float(s["peak_rss_mb"]) for s in samples),  # type: ignore[arg-type]
            **_backend(),
            "python": platform.python_version(),
            "cpus": _cpus(),
        }
        print(json.dumps(line), flush=True)


def _backend() -> dict[str, str]:
    import os

    buses = {
        "postgres+redis": "redis streams",
        "postgres+kafka": "kafka (tansu unless HEADRACE_TEST_KAFKA)",
        "postgres+redis+kafka": "migrating: redis acts, a copy to kafka (dual-write)",
    }
    chosen = os.environ.get("BACKEND", "sqlite+memory")
    if chosen in buses:
        return {"store": "postgres(synchronous_commit=on, fsync=on)", "bus": buses[chosen]}
    return {"store": "sqlite(wal, synchronous=NORMAL)", "bus": "memory"}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
