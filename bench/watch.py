"""A client that watches one run: `python -m bench.watch URL RUN_ID` follows the run's event
stream (SSE) from its start to its end, then prints how many events it read."""

from __future__ import annotations

import sys

import httpx


def main() -> None:
    url, run_id = sys.argv[1], sys.argv[2]
    events = 0
    with (
        httpx.Client(base_url=url, timeout=None) as client,
        client.stream("GET", f"/v1/runs/{run_id}/events") as stream,
    ):
        for line in stream.iter_lines():
            events += line.startswith("id: ")
    print(events)


if __name__ == "__main__":
    main()
