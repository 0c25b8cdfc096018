"""What the pooled SSH connector costs against a real sshd on loopback.

Prints the cold connect (TCP, key exchange, authentication and one ``true``), a warm
``true`` round trip on the pooled connection, an upload of 10 configuration-sized
files, and 50 nodes (50 pooled connections to one sshd, different node ids) each
running ``true`` at once, cold and warm.  Ratios: what pooling saves per command,
and how much the parallel fan-out gains over running the 50 one after another.

    .venv/bin/python bench/ssh_pool.py [--runs 200] [--nodes 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.connector import SSHConnectionPool  # noqa: E402
from tests.sshd import SshServer  # noqa: E402


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="warm round trips to time")
    parser.add_argument("--nodes", type=int, default=50, help="pooled targets in parallel")
    args = parser.parse_args()

    server = SshServer()
    try:
        target = server.target()
        colds = []
        for _ in range(10):
            pool = SSHConnectionPool()
            colds.append(timed(lambda pool=pool: pool.run(target, ["true"])))
            pool.close()
        cold = statistics.median(colds)
        print(f"cold connect + true (median of 10): {ms(cold)}")

        pool = SSHConnectionPool()
        try:
            pool.run(target, ["true"])
            warm = statistics.median(timed(lambda: pool.run(target, ["true"]))
                                     for _ in range(args.runs))
            print(f"warm true round trip (median of {args.runs}): {ms(warm)}")

            files = {f"sites/site{n}.example.com.conf": os.urandom(2048) for n in range(10)}
            base = server.root / "uploads"
            base.mkdir()
            uploads = [timed(lambda n=n: pool.upload_tree(target, f"{base}/v{n}", files))
                       for n in range(30)]
            print(f"upload of 10 files, 2 KiB each (median of 30): "
                  f"{ms(statistics.median(uploads))}")
            assert pool.stats()["connects"] == 1
        finally:
            pool.close()

        pool = SSHConnectionPool()
        try:
            targets = [server.target(node_id) for node_id in range(1, args.nodes + 1)]
            with ThreadPoolExecutor(max_workers=args.nodes) as executor:
                def fan_out() -> None:
                    results = list(executor.map(lambda t: pool.run(t, ["true"]), targets))
                    assert all(result.ok for result in results)

                cold_wall = timed(fan_out)
                warm_walls = [timed(fan_out) for _ in range(5)]
            warm_wall = statistics.median(warm_walls)
            assert pool.stats()["connects"] == args.nodes
            print(f"{args.nodes} pooled targets, run true in parallel, cold (connecting): "
                  f"{ms(cold_wall)} wall")
            print(f"{args.nodes} pooled targets, run true in parallel, warm (median of 5): "
                  f"{ms(warm_wall)} wall")
        finally:
            pool.close()

        print(f"ratio cold/warm per command: {cold / warm:.1f}x")
        print(f"ratio sequential estimate/parallel wall (warm): "
              f"{args.nodes * warm / warm_wall:.1f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
