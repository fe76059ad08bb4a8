"""Shared test setup: offline hubs, quiet progress bars, tiny in-process models."""
from __future__ import annotations

import os
import sys

# No hub at test time: a hub id must fail fast, never hang on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker gets one torch thread: the workers already
    fill the cores, and two threads per worker on 2 cores made every worker slower. Launched processes set their
    own threads (``distributed_helpers.worker_env``)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The tests that start processes (``distributed``, the longest: 20-60 s each on 2 cores) run first, so under
    ``make test``'s ``-n auto`` the short tests fill the workers around them instead of one worker finishing a long
    group alone at the end. Stable: file order is kept within each part."""
    items.sort(key=lambda item: item.get_closest_marker("distributed") is None)


@pytest.fixture(scope="session")
def tiny_llama_path() -> str:
    """Folder of a tiny random Llama with a ChatML template (pad == EOS, like SmolLM2)."""
    from rlhf.models.zoo import resolve_model

    return resolve_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert_path() -> str:
    from rlhf.models.zoo import resolve_model

    return resolve_model("tiny-bert")


@pytest.fixture()
def run_cfg(tmp_path):
    """A RunConfig writing under tmp_path with W&B disabled (one test covers offline W&B)."""
    from rlhf.core.config import RunConfig

    return RunConfig(output_dir=str(tmp_path / "runs"), run_name="test", wandb_mode="disabled")


@pytest.fixture()
def one_torch_thread():
    """Tiny models run fastest on one thread, and stay fast when other jobs share the 2 cores.
    Test modules of tiny-model training and scoring use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any causal-LM load fails the test: for checks that must end a stage before its model loads.

    Every causal LM of a stage loads through the zoo's ``load_causal_lm`` (``rlhf.models.policies.load_weights`` imports it
    when called), so patching the zoo catches them all."""
    import rlhf.models.zoo

    def fail(*args, **kwargs):
        raise AssertionError("a model loaded before the stage's checks ended it")

    monkeypatch.setattr(rlhf.models.zoo, "load_causal_lm", fail)


@pytest.fixture
def bnb():
    """bitsandbytes (the ``test`` extra installs it; its 4-bit kernels run on CPU): a missing one fails the QLoRA
    tests instead of skipping them, so CI cannot pass without having run them."""
    try:
        import bitsandbytes
    except ImportError as err:
        pytest.fail(f"bitsandbytes is not installed ({err}): pip install -e '.[test]'", pytrace=False)
    return bitsandbytes


@pytest.fixture(scope="session")
def pulled_zoo():
    """Every embedded zoo model, pulled into this session's ``$RLHF_HOME``: for tests that read a real model's
    files without loading it through the zoo (which would pull it), such as the planner's ``auto_pull=False``.
    ``make test`` starts on empty caches, so a test that forgot this fails on a developer's machine too.
    Idempotent and atomic (``rlhf.models.zoo.pull``); from pip's cache when the wheels are there."""
    from rlhf.models import zoo

    return {name: str(zoo.pull(name, log=lambda msg: print(msg, file=sys.stderr))) for name in zoo.ZOO}
