"""SFT over 2 CPU processes (torchrun, gloo), sharded with FSDP2 (LoRA, full fine-tuning and prompt tuning) and
under DDP (LoRA and full fine-tuning), each launch as `accelerate launch` with fsdp.yaml or ddp.yaml starts it:
the losses equal one process on the same global batch, both ranks end with the same whole weights, a run resumed
from a (FSDP2: sharded) checkpoint in a fresh process group ends where an uninterrupted one does, and the exports load in
one process.

(Merged here: the DDP run without a run name, whose ranks agree on rank 0's timestamped folder and log once,
formerly test_sft_distributed.py.)

Everything in fp32, so the tolerances are tight: losses rtol 1e-5 against one process (measured: 1.4e-7 at most),
gradient norms (over all shards, before clipping) rtol 1e-4 (measured 1.6e-6); exported weights atol 1e-4
(measured 1.5e-5 at most, after 4 Adam steps at lr 1e-2: Adam divides each gradient by its own running norm,
which scales up a summation-order difference); resume: bit-identical."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_helpers import STRATEGY_ENV, grouped, killed_after, worker_env
from rlhf.core.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "configs" / "sft_tiny.yaml"
FSDP_ENV = STRATEGY_ENV["fsdp2"]  # what `accelerate launch` with fsdp.yaml sets
GLOBAL_BATCH, ACCUM, STEPS = 4, 2, 4  # 2 micro-batches a step: FSDP's reduce-scatter waits for the last
CLIP = 0.02  # below every step's gradient norm: the clip, from the norm over all shards, changes every update
METHODS = {"lora": ["--train.save_merged", "true"], "full": ["--lora.enabled", "false"],
           "prompt_tuning": ["--lora.enabled", "false", "--prompt_tuning.enabled", "true"]}  # its prompt: root unit


def stage(out: Path, method: str, procs: int, *flags: str, strategy: str = "fsdp2", name: str | None = "run") -> Path:
    """Run the SFT stage script on ``procs`` processes (``strategy`` when 2) with the same global batch; its run
    folder. ``name=None``: no run name, so the ranks (started at different times) must agree on rank 0's
    timestamped folder."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
              if procs > 1 else [sys.executable])
    cmd = [*launch, str(ROOT / "pipelines" / "sft.py"), "--config", str(TINY), *METHODS[method],
           "--run.output_dir", str(out), *(["--run.run_name", name] if name else []), "--forgetting.enabled", "false",
           "--train.precision", "fp32", "--train.batch_size", str(GLOBAL_BATCH // (procs * ACCUM)),
           "--train.grad_accum", str(ACCUM),
           "--train.max_steps", str(STEPS), "--train.save_steps", "2", "--train.max_grad_norm", str(CLIP),
           "--data.samples", "1", *flags]
    env = {**worker_env(), "HF_HUB_OFFLINE": "1", **(STRATEGY_ENV[strategy] if procs > 1 else {})}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    if name:
        return out / name
    [run_dir] = list(out.iterdir())  # one folder for both ranks
    return run_dir


def losses(run_dir: Path, key: str = "loss/train") -> dict[int, float]:
    """step -> the logged ``key``; a later record of a step (a resumed run) wins."""
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def exported(run_dir: Path, method: str, folder: str = "final") -> dict[str, torch.Tensor]:
    """The weights ``folder`` holds, loaded in this one process the way a user would (base + adapter for LoRA's
    ``final/``; a plain HF folder for full fine-tuning's and for ``final-merged/``)."""
    from peft import PeftModel

    from rlhf.models.zoo import load_causal_lm

    if method != "full" and folder == "final":
        model = PeftModel.from_pretrained(load_causal_lm("tiny-llama"), run_dir / folder)
    else:
        model = load_causal_lm(str(run_dir / folder))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


RUNS = [("fsdp2", method) for method in sorted(METHODS)] + [("ddp", "full"), ("ddp", "lora")]
# Resumed: every FSDP2 method (each restores its own sharded state) and DDP with LoRA. DDP's full fine-tuning
# resumes from the same kind of checkpoint (rank 0's whole model and optimizer) as DDP's LoRA and as one process
# (test_sft_train.py), so it would check nothing new for one more launch.
RESUMED = [run for run in RUNS if run != ("ddp", "full")]


# Grouped by method: a method's DDP and FSDP2 runs compare with its one one-process run, and its resume tests reuse
# the uninterrupted runs, so each launch is made once.
@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_llama_path):
    """(strategy, method) -> the folder of its uninterrupted 2-process run (checkpoints at steps 2 and 4), made
    once for the match and the resume test."""
    @functools.cache
    def get(strategy: str, method: str) -> Path:
        return stage(tmp_path_factory.mktemp(f"{strategy}-{method}"), method, 2, strategy=strategy, name=None)
    return get


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_llama_path):
    """method -> its one-process run on the same global batch, made once: DDP and FSDP2 compare with the same one."""
    @functools.cache
    def get(method: str) -> Path:
        return stage(tmp_path_factory.mktemp(f"single-{method}"), method, 1)
    return get


@pytest.mark.distributed
@pytest.mark.parametrize("strategy, method", grouped("sft", RUNS, key=lambda run: run[1]))
def test_two_processes_match_one_process_and_ranks_agree(strategy, method, two_process_run, single_run):
    run_dir = two_process_run(strategy, method)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dist/world_size"] == 2 and summary["train/steps"] == STEPS
    # (b) sha256 of the gathered trainable weights, computed on each rank, all equal
    assert summary["dist/ranks_in_sync"] is True
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    if strategy == "fsdp2":
        assert sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not (checkpoint / "optimizer.pt").exists()  # no rank-0 pickle of DTensors: each rank wrote its shard
    else:  # DDP: every rank holds the whole model, the Trainer's rank 0 writes it
        assert (checkpoint / "optimizer.pt").is_file() and not (checkpoint / "sharded").exists()

    single = single_run(method)
    # (a) the same global batch of 4: 2 per rank, 4 in one process
    logged = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss/train" in r]
    assert logged == list(range(1, STEPS + 1))  # one logger: rank 1 writes nothing
    assert losses(run_dir) == pytest.approx(losses(single), rel=1e-5)
    norms = losses(run_dir, "train/grad_norm")  # before clipping: the norm over both ranks' shards
    assert norms == pytest.approx(losses(single, "train/grad_norm"), rel=1e-4)
    assert min(norms.values()) > CLIP
    sharded_weights, single_weights = exported(run_dir, method), exported(single, method)
    assert sharded_weights.keys() == single_weights.keys()
    for name, weight in single_weights.items():
        torch.testing.assert_close(sharded_weights[name], weight, rtol=0, atol=1e-4, msg=name)
    assert trained(sharded_weights)  # the comparison is of trained weights, not of two copies of the start
    if method == "lora":  # base + adapter folded into plain weights, from the sharded run's saved adapter
        merged, single_merged = exported(run_dir, method, "final-merged"), exported(single, method, "final-merged")
        for name, weight in single_merged.items():
            torch.testing.assert_close(merged[name], weight, rtol=0, atol=1e-4, msg=name)
        assert trained(merged)


def trained(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the weights training moved: LoRA's B matrices (they start at zero), base weights that changed, or
    the soft prompt (it starts as the init text's embeddings)."""
    from rlhf.models.zoo import load_causal_lm

    base = load_causal_lm("tiny-llama")
    start = dict(base.named_parameters())
    embeddings = base.get_input_embeddings().weight
    return [name for name, w in weights.items()
            if ("lora_B" in name and bool(w.any())) or (name in start and not torch.equal(w, start[name]))
            or ("prompt_encoder" in name and not any(torch.equal(row, e) for row in w for e in embeddings))]


@pytest.mark.distributed
@pytest.mark.parametrize("strategy, method", grouped("sft", RESUMED, key=lambda run: run[1]))
def test_two_processes_resume_from_a_checkpoint_matches_uninterrupted(strategy, method, two_process_run, tmp_path):
    """Killed after checkpoint-2: a fresh torchrun resumes from it (FSDP2: its shards) and redoes steps 3-4 exactly."""
    run_dir = two_process_run(strategy, method)
    killed = killed_after(run_dir, tmp_path / "run", step=2)
    assert stage(tmp_path, method, 2, "--resume", str(killed), strategy=strategy) == killed
    assert losses(killed) == losses(run_dir)  # steps 3 and 4 retrained: bit-identical
    resumed, uninterrupted = exported(killed, method), exported(run_dir, method)
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, rtol=0, atol=0, msg=name)


def test_resume_needs_the_launch_that_wrote_the_checkpoint(tmp_path, monkeypatch):
    from rlhf.core.checkpoints import CheckpointError
    from rlhf.sft.fsdp import check_resume

    (tmp_path / "checkpoint-2" / "sharded").mkdir(parents=True)
    (tmp_path / "checkpoint-4").mkdir()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_resume(tmp_path / "checkpoint-2")
    check_resume(None)
    with pytest.raises(CheckpointError, match="checkpoint-4: written unsharded; this run is sharded"):
        check_resume(tmp_path / "checkpoint-4")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    check_resume(tmp_path / "checkpoint-4")
    with pytest.raises(CheckpointError, match=r"checkpoint-2: written sharded \(FSDP\); this run is unsharded"):
        check_resume(tmp_path / "checkpoint-2")


def test_fsdp_refuses_a_model_it_cannot_wrap_before_loading(monkeypatch, capsys, tmp_path, no_model_loads):
    """A model without a list of config.num_hidden_layers blocks, or a one-process launch: one line, exit 2,
    and no model is loaded (only its config is read)."""
    from rlhf.stages import STAGES
    cli = STAGES["sft"].cli
    from test_sharding import unwrappable_config

    for name, value in FSDP_ENV.items():
        monkeypatch.setenv(name, value)
    args = ["--config", str(TINY), "--forgetting.enabled", "false"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli(args) == 2
    assert capsys.readouterr().err.strip() == ("error: ACCELERATE_USE_FSDP=true: sharding needs 2 or more processes "
                                               "(torchrun --nproc_per_node N, or accelerate launch)")
    model = unwrappable_config(tmp_path / "model")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the check comes before any process group
    assert cli([*args, "--model.name", model]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: model.name: {model}: FSDP cannot wrap it: ")
    assert "no list of transformer layers" in err
