"""The refusal limiter's memory after 300,000 distinct client addresses, each refused once within the window,
against the `limits` library's moving window in memory (what the API used before), measured side by side.

Every address is refused once (the worst case for memory: a flood from many addresses, none of them blocked yet).
Memory is what tracemalloc sees still allocated once the addresses are in; time is per refusal counted. Prints a
table and writes bench/results/limiter.json.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.security import RateLimits  # noqa: E402
from api.settings import Settings  # noqa: E402

ADDRESSES = 300_000
LIMIT = "10/minute"


def ipv4(count: int) -> list[str]:
    return [str(ipaddress.IPv4Address(0x0A000000 + number)) for number in range(count)]


def ipv6(count: int) -> list[str]:
    """Addresses in as many /64s as there are addresses: the most keys IPv6 can make."""
    draw = random.Random(7).getrandbits
    return [str(ipaddress.IPv6Address((0x20010DB8 << 96) | (draw(32) << 64) | draw(64))) for _ in range(count)]


def measure(make: Callable[[], Callable[[str], None]], addresses: list[str]) -> tuple[float, float]:
    """MiB still allocated after every address was refused once, and microseconds per refusal. The time is taken
    on a limiter of its own, without tracemalloc, which slows every allocation down."""
    refuse = make()
    started = time.perf_counter()
    for address in addresses:
        refuse(address)
    elapsed = time.perf_counter() - started
    del refuse
    gc.collect()
    tracemalloc.start()
    refuse = make()
    for address in addresses:
        refuse(address)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / 2**20, elapsed / len(addresses) * 1e6


def measure_one(family: str, name: str) -> tuple[float, float]:
    return measure(LIMITERS[name], FAMILIES[family](ADDRESSES))


def ours() -> Callable[[str], None]:
    secret = "bench-5e0c2b7f9a1d4e8c6b3a0f2d7e9c1b5a"
    settings = Settings(webhook_secret=secret, deploy_signature_failure_limit=LIMIT)
    return RateLimits(settings).refused


def limits_moving_window() -> Callable[[str], None]:
    limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.parse(LIMIT)
    return lambda address: limiter.hit(item, "signature", address)


FAMILIES = {"IPv4": ipv4, "IPv6, one per /64": ipv6}
LIMITERS = {"project (bounded)": ours, "limits moving window": limits_moving_window}


def main() -> None:
    results = {}
    print(f"refusal limiter: {ADDRESSES:,} distinct addresses, each refused once ({LIMIT})")
    # Each in a process of its own: `limits`' memory storage keeps a timer thread that walks every key, which would
    # slow down whatever is measured after it.
    with ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1) as pool:
        for family in FAMILIES:
            for name in LIMITERS:
                mebibytes, microseconds = pool.submit(measure_one, family, name).result()
                results[f"{family}: {name}"] = {"MiB": round(mebibytes, 1), "us_per_refusal": round(microseconds, 1)}
                label = f"  {family}: {name}"
                print(f"{label:<60}{mebibytes:>8.1f} MiB{microseconds:>8.1f} us/refusal")
    print(f"  the project keeps at most {RateLimits.MAX_ADDRESSES:,} addresses (or /64s) in the window")
    output = REPO / "bench" / "results" / "limiter.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps({"addresses": ADDRESSES, "limit": LIMIT, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
