"""``python -m hedge_bridge``: one run of one job in a short-lived process.

The scheduler passes the run context as JSON in ``HEDGE_CONTEXT`` (with the entry point under
``entry``) and a path in ``HEDGE_RESULT_FILE`` where the outcome is written as JSON. The process
exits 0 on success, the job's code for ``sys.exit(n)``, and 1 when the job raised.
"""

import json
import os
import sys

from hedge_bridge import call, context_from_json


def main() -> int:
    raw = os.environ.get("HEDGE_CONTEXT")
    if not raw:
        print("hedge_bridge: HEDGE_CONTEXT is not set; run jobs through hedge-scheduler", file=sys.stderr)
        return 2
    entry = json.loads(raw)["entry"]
    ctx = context_from_json(raw)
    outcome = call(entry, ctx)
    if outcome["status"] == "error":
        sys.stderr.write(outcome["traceback"])
    result_file = os.environ.get("HEDGE_RESULT_FILE")
    if result_file:
        tmp = result_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(outcome, f)
        os.replace(tmp, result_file)
    sys.stdout.flush()
    sys.stderr.flush()
    if outcome["status"] == "ok":
        return 0
    if outcome["status"] == "exit":
        return int(outcome["exit_code"])
    return 1


if __name__ == "__main__":
    sys.exit(main())
