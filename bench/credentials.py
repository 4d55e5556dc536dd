"""What encrypting stored credentials costs a request: `Credentials.seal` on the happy
path (every durable request pays its scan, requests with credentials their encryption),
and `Credentials.open` when a run is rebuilt from the store.

Prints the best of several timed loops per request shape, in µs, beside the cost of
encoding the same headers for the store, which every durable request pays anyway.

    python -m bench.credentials [--number 100000]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from gateway.engine.credentials import Credentials
from gateway.engine.tokens import new_run_id, new_secret
from gateway.store import Headers, StoredRequest
from gateway.store.batch import encode_headers

# What a durable request's stored headers look like: the client's, then the gateway's.
BASE: Headers = [
    ("Host", "api.example"),
    ("User-Agent", "curl/8.5.0"),
    ("Accept", "*/*"),
    ("Content-Type", "application/json"),
    ("Content-Length", "120"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "api.example"),
    ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
]
SHAPES: dict[str, Headers] = {
    "no credentials": BASE,
    "Authorization": [*BASE, ("Authorization", "Bearer " + "x" * 40)],
    "Authorization + Cookie": [
        *BASE,
        ("Authorization", "Bearer " + "x" * 40),
        ("Cookie", "session=" + "y" * 32),
    ],
}


def best_us(call: Callable[[], object], number: int) -> float:
    """The fastest of five loops of `number` calls, per call, in µs."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def measure(
    credentials: Credentials, run_id: str, headers: Headers, number: int
) -> tuple[float, float, float]:
    """µs to seal a request with these headers, to open it, and to encode them."""
    request = StoredRequest("POST", "/api/chat", headers, b"{}")
    sealed = credentials.seal(run_id, request)
    return (
        best_us(lambda: credentials.seal(run_id, request), number),
        best_us(lambda: credentials.open(run_id, sealed), number),
        best_us(lambda: encode_headers(sealed.headers), number),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per timed loop")
    args = parser.parse_args()
    credentials = Credentials.from_text(new_secret())
    run_id = new_run_id()
    print(f"{'request headers':24} {'seal µs':>8} {'open µs':>8} {'encode µs':>10}")
    for name, headers in SHAPES.items():
        seal, opened, encode = measure(credentials, run_id, headers, args.number)
        print(f"{name:24} {seal:8.2f} {opened:8.2f} {encode:10.2f}")


if __name__ == "__main__":
    main()
