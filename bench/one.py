"""One sample of one workload in this process: `python -m bench.one W1 /tmp/x.db`."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from bench.workloads import PEAKS, measure


def main() -> None:
    name, db = sys.argv[1], Path(sys.argv[2])
    result = measure(name, db)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = {"bench": round(peak_mb, 1), **PEAKS}
    print(json.dumps({**result, "peak_rss_mb": max(peaks.values()), "process_peak_mb": peaks}))


if __name__ == "__main__":
    main()
