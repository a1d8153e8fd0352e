"""One cold worker process of the many-processes scenario.

    python benchmarks/worker.py LABEL BASE_URL CONCURRENCY

Imports everything and builds nothing, prints ``ready``, waits for a line on stdin (so all
workers start at the same moment), builds the contender's client, sends CONCURRENCY
concurrent GETs, and prints one JSON line: ``{"failed": n, "caller_401": n}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

import contenders as c
import scenarios as s


async def work(label: str, base_url: str, concurrency: int) -> dict[str, int]:
    contender = c.by_label(label)
    client = await contender.make(c.Target(base_url, s.CLIENT_ID, s.CLIENT_SECRET))
    tally = s.Tally()
    try:
        await asyncio.gather(*(tally.call(client) for _ in range(concurrency)))
    finally:
        await client.aclose()
    return {"failed": tally.failed, "caller_401": tally.statuses.get(401, 0)}


def main() -> None:
    label, base_url, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(asyncio.run(work(label, base_url, concurrency))), flush=True)


if __name__ == "__main__":
    main()
