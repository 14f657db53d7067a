"""The `ship` agent: reads its input on stdin, writes one JSON document on stdout."""

import json
import os
import sys

request = json.load(sys.stdin)
json.dump(
    {
        "carrier": "parcel-post",
        "tracking": f"PP-{os.environ['HEADRACE_RUN_ID'][:8]}",
        "attempt": int(os.environ["HEADRACE_ATTEMPT"]),
        "request": request,
    },
    sys.stdout,
)
