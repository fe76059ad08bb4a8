"""``rlhf annotate`` end to end through its argv entry point: annotators, import, assign, stats, export, make-tasks."""
from __future__ import annotations

import json

import pytest

from rlhf.annotate.cli import main
from rlhf.annotate.store import Store
from rlhf.data.records import load_preferences


def add(db, name, capsys, *flags) -> str:
    assert main(["add-annotator", name, "--db", str(db), *flags]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40 and "\n" not in token
    return token


def items_file(path, n):
    rows = [{"id": f"i{i}", "prompt": f"Prompt {i}", "response_a": f"A{i}", "response_b": f"B{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_import_waits_for_annotators_then_assign_balances(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    add(db, "boss", capsys, "--admin")
    add(db, "alice", capsys)
    assert main(["import", str(items_file(tmp_path / "items.jsonl", 9)), "--db", str(db), "--k", "2"]) == 0
    assert "not assigned yet: each item needs 2 annotators and 1 exist" in capsys.readouterr().err
    add(db, "bob", capsys)
    add(db, "carol", capsys)
    assert main(["assign", "--db", str(db), "--k", "2"]) == 0
    assert "assigned 18 new" in capsys.readouterr().out
    assert Store(db).assignment_loads() == {"alice": 6, "bob": 6, "carol": 6}  # the admin gets none
    assert main(["assign", "--db", str(db), "--k", "3"]) == 0  # raising k fills the gaps only
    assert Store(db).counts()["assignments"] == 27


def test_stats_and_export_on_hand_computed_labels(tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    add(db, "alice", capsys)
    add(db, "bob", capsys)
    assert main(["import", str(items_file(tmp_path / "items.jsonl", 4)), "--db", str(db), "--k", "2"]) == 0
    store = Store(db)
    alice, bob = store.annotators()
    # helpful: both A,A,B,B (kappa 1, alpha 1); honest: always opposite (kappa -1;
    # alpha = 1 - (n-1) * D_o / D_e = 1 - 7 * 8 / (4 * 4 * 2) = -0.75); harmless: all tie (undefined).
    for item_id, helpful, (honest_alice, honest_bob) in zip([1, 2, 3, 4], "AABB", ["AB", "BA", "AB", "BA"]):
        store.save_label(alice.id, item_id, {"helpful": helpful, "honest": honest_alice, "harmless": "tie"})
        store.save_label(bob.id, item_id, {"helpful": helpful, "honest": honest_bob, "harmless": "tie"})
    capsys.readouterr()
    assert main(["stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["labels"], stats["items_multiply_labelled"]) == (8, 4)
    helpful, honest, harmless = stats["dimensions"]
    assert (helpful["kappa"], helpful["alpha"], helpful["kappa_pairs"]) == (pytest.approx(1.0), pytest.approx(1.0), 1)
    assert (honest["kappa"], honest["alpha"]) == (pytest.approx(-1.0), pytest.approx(-0.75))
    assert (harmless["kappa"], harmless["alpha"], harmless["tie_fraction"]) == (None, None, 1.0)
    assert stats["labels_per_annotator"] == {"alice": 4, "bob": 4}
    assert main(["stats", "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "helpful" in table and "-0.750" in table and "time per item" in table

    out = tmp_path / "prefs.jsonl"
    assert main(["export", str(out), "--db", str(db)]) == 0
    assert "wrote 4 preference records from 4 labelled items" in capsys.readouterr().out
    records = load_preferences(out)
    assert [(r.prompt, r.chosen, r.dimension) for r in records] == [
        ("Prompt 0", "A0", ["helpful"]), ("Prompt 1", "A1", ["helpful"]),
        ("Prompt 2", "B2", ["helpful"]), ("Prompt 3", "B3", ["helpful"])]  # honest is level, harmless all tie


def test_reading_commands_refuse_a_missing_database(tmp_path, capsys):
    for argv in (["stats"], ["export", str(tmp_path / "out.jsonl")], ["assign"], ["serve"]):
        assert main([*argv, "--db", str(tmp_path / "typo.sqlite")]) == 1
        assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "typo.sqlite").exists()


def test_make_tasks_samples_two_responses_per_prompt(tmp_path, capsys, tiny_llama_path):
    db = tmp_path / "db.sqlite"
    add(db, "alice", capsys)
    add(db, "bob", capsys)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say hello.", "Name a colour.", "Unused."]))
    argv = ["make-tasks", "--db", str(db), "--policy", tiny_llama_path, "--prompts", str(prompts),
            "--n", "2", "--max-new-tokens", "6", "--k", "2"]
    assert main(argv) == 0
    items = list(Store(db).items().values())
    assert [i.prompt for i in items] == ["Say hello.", "Name a colour."]
    assert all(i.response_a.strip() and i.response_a != i.response_b for i in items)
    assert all(i.source == f"make-tasks: A={tiny_llama_path} B={tiny_llama_path}" for i in items)
    assert Store(db).assignment_loads() == {"alice": 2, "bob": 2}
    assert main([*argv, "--policy2", tiny_llama_path, "--seed", "5"]) == 0  # two policies: one answer each
    assert Store(db).counts()["items"] == 4
