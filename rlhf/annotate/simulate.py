"""Simulated annotators: many concurrent HTTP clients labelling at once (the load test and its benchmark).

Each simulated annotator does what a person does, as fast as it can: ask for the first item
(``GET /`` -> 303), then per item open it (``GET /items/N``) and submit a label (``POST /items/N``
-> 303 to the next item). It remembers what it sent, so the caller can check the database holds
exactly that: no submission lost, none duplicated, none mixed up between annotators.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rlhf.annotate.store import CHOICES, NewItem, Store
from rlhf.data.records import DIMENSIONS


@dataclass
class LoadRun:
    seconds: float
    sent: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)  # (annotator, item) -> choices
    errors: list[str] = field(default_factory=list)

    @property
    def submissions(self) -> int:
        return len(self.sent)

    @property
    def submissions_per_s(self) -> float:
        return self.submissions / self.seconds if self.seconds > 0 else 0.0


def prepare_load_db(db_path: str | Path, annotators: int, per_annotator: int, k: int = 2) -> dict[str, str]:
    """A database where each of ``annotators`` holds exactly ``per_annotator`` items; returns name -> token."""
    if (annotators * per_annotator) % k:
        raise ValueError("annotators * per_annotator must be a multiple of k for equal loads")
    store = Store(db_path)
    tokens = {f"annotator{i:02d}": "" for i in range(annotators)}
    for name in tokens:
        tokens[name] = store.add_annotator(name)
    n_items = annotators * per_annotator // k
    store.add_items([NewItem(prompt=f"Prompt {i}: which answer is better?", response_a=f"Answer A to {i}.",
                             response_b=f"Answer B to {i}.", external_id=f"load-{i}") for i in range(n_items)])
    store.assign(k)
    return tokens


def _annotate(base_url: str, name: str, token: str, submissions: int, start: threading.Barrier,
              run: LoadRun, lock: threading.Lock, timeout_s: float, deadline: float) -> None:
    rng = random.Random(name)  # reproducible choices per annotator
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s) as client:
        start.wait()
        url = None
        for n in range(submissions):
            try:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the run took longer than allowed; {n} submissions made")
                if url is None:  # the first item, as after logging in
                    home = client.get("/")
                    if home.status_code != 303:
                        raise RuntimeError(f"GET / answered {home.status_code}, expected a redirect to an item")
                    url = home.headers["location"]
                item_id = int(url.rsplit("/", 1)[1])
                page = client.get(url)
                if page.status_code != 200:
                    raise RuntimeError(f"GET {url} answered {page.status_code}")
                choices = {d: rng.choice(CHOICES) for d in DIMENSIONS}
                saved = client.post(url, data={**choices, "rationale": f"{name} #{n}"})
                if saved.status_code != 303:
                    raise RuntimeError(f"POST {url} answered {saved.status_code}")
                url = saved.headers["location"]  # the next unlabelled item ("/" after the last)
            except Exception as err:  # record and stop this annotator; the others carry on
                with lock:
                    run.errors.append(f"{name}, submission {n}: {type(err).__name__}: {err}")
                return
            with lock:
                if (name, item_id) in run.sent:
                    run.errors.append(f"{name} was sent item {item_id} twice")
                run.sent[(name, item_id)] = choices


def simulate_annotators(base_url: str, tokens: dict[str, str], submissions: int,
                        timeout_s: float = 30.0, max_seconds: float = 300.0) -> LoadRun:
    """Every annotator in its own thread, all starting together; returns what was sent and how long it took.

    Bounded in time: a request waits at most ``timeout_s``, and after ``max_seconds`` every
    annotator stops (with an error) at its next submission.
    """
    run, lock = LoadRun(seconds=0.0), threading.Lock()
    start = threading.Barrier(len(tokens) + 1)
    deadline = time.monotonic() + max_seconds
    threads = [threading.Thread(target=_annotate, name=f"sim-{name}",
                                args=(base_url, name, token, submissions, start, run, lock, timeout_s, deadline))
               for name, token in tokens.items()]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - began
    return run
