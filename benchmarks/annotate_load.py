"""Throughput of the annotation server under concurrent annotators (submissions per second).

Each repeat builds a fresh database (annotators x submissions labels to make), starts a real
uvicorn server on loopback, runs the simulated annotators (rlhf.annotate.simulate: GET next item,
GET the item page, POST the label, as fast as they can) and checks the database holds exactly
what was sent. Prints each repeat, the median, and the load average (other work on the machine
slows every number; record it with them).

    python benchmarks/annotate_load.py                       # 20 annotators x 50, server in a subprocess
    python benchmarks/annotate_load.py --server thread       # server in this process (as in the test)
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rlhf.annotate.simulate import prepare_load_db, simulate_annotators
from rlhf.annotate.store import Store


@contextmanager
def server_in_subprocess(db: Path) -> Iterator[str]:
    """``rlhf annotate serve`` as its own process: clients and server do not share one GIL."""
    import httpx

    with socket.socket() as probe:  # a free port; the tiny window before uvicorn binds it is fine here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "rlhf.annotate.cli", "serve", "--db", str(db), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base_url + "/login", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def server_in_thread(db: Path) -> Iterator[str]:
    from rlhf.annotate.app import create_app
    from rlhf.annotate.serving import serve_in_thread

    with serve_in_thread(create_app(db)) as base_url:
        yield base_url


def one_run(annotators: int, submissions: int, k: int, server: str) -> float:
    with tempfile.TemporaryDirectory(prefix="annotate-load-") as tmp:
        db = Path(tmp) / "load.sqlite"
        tokens = prepare_load_db(db, annotators, submissions, k=k)
        serve = server_in_subprocess if server == "subprocess" else server_in_thread
        with serve(db) as base_url:
            run = simulate_annotators(base_url, tokens, submissions)
        labels = Store(db).labels()
        stored = {(label.annotator, label.item_id): label.choices for label in labels}
        expected = annotators * submissions
        if run.errors or len(labels) != expected or stored != run.sent:
            raise SystemExit(f"WRONG: {len(labels)} labels stored for {run.submissions} sent, expected {expected}; "
                             f"errors: {run.errors[:3]}")
        return run.submissions_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--submissions", type=int, default=50, help="per annotator")
    parser.add_argument("--k", type=int, default=2, help="annotators per item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=["subprocess", "thread"], default="subprocess")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rates = []
    for repeat in range(args.repeats):
        rate = one_run(args.annotators, args.submissions, args.k, args.server)
        rates.append(rate)
        print(f"repeat {repeat + 1}: {args.annotators} annotators x {args.submissions} submissions, "
              f"all stored exactly: {rate:.1f} submissions/s")
    load_after = os.getloadavg()
    print(f"median {statistics.median(rates):.1f} submissions/s (server: {args.server}, {os.cpu_count()} CPUs; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after)")


if __name__ == "__main__":
    main()
