"""A Lambda-style function: a module-level provider, ``asyncio.run`` per invocation.

The runtime loop reads one line per invocation on stdin and prints ``RESULT {json}`` per
invocation on stdout, as Lambda's runtime hands events to a handler; between invocations
the process may be frozen (the test stops it with SIGSTOP, as Lambda freezes it).
"""

from __future__ import annotations

import asyncio
import json
import sys

from deployments.apps.service import call_api, make_provider

PROVIDER = make_provider()


def handler(event: object, context: object) -> dict[str, int]:
    """The function's handler: get a token, call the API, return what it said."""
    return asyncio.run(call_api(PROVIDER))


def main() -> None:
    """Invoke the handler once per line of stdin, until it closes."""
    print("READY", flush=True)  # noqa: T201
    for line in sys.stdin:
        result = handler(line, None)
        print(f"RESULT {json.dumps(result)}", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
