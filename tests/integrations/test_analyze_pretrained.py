"""ess-analyze on a folder written by save_pretrained: offline, eager attention, a file of ids or
random ids, the table, the figure and the boundary profile, and an MLflow run read back."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from mlflow.tracking import MlflowClient  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from ess_reg.harness.ess_analyze import main  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_a_saved_model_is_measured_on_a_file_of_ids_and_logged(folder, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(5, 64, (2, 24), generator=g)
    rows[:, 11] = 2  # the separator, in the middle of each sequence
    ids.write_text("\n".join(" ".join(str(int(v)) for v in row) for row in rows))
    uri, out = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "out"
    code = main([str(folder), "--ids", str(ids), "--separator", "2", "--out", str(out), "--tracking-uri", uri])
    assert code == 0
    printed = capsys.readouterr().out
    layers = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert all(name in printed for name in layers) and "boundary drop" in printed
    profile = json.loads((out / "boundary_profile.json").read_text())["profiles"]
    assert sorted(profile) == layers and all(len(v) == 9 for v in profile.values())  # offsets -4..4
    assert (out / "ess_vs_index.png").stat().st_size > 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ess-analyze").experiment_id])
    assert run.data.params["model_type"] == "llama" and run.data.params["length"] == "24"
    assert run.data.metrics["model.layers.0.self_attn/tss"] > 0
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == sorted(
        ["boundary_profile.json", "ess_vs_index.png", "table.txt"])


def test_random_ids_of_a_stated_length_and_bad_inputs_refused(folder, tmp_path, capsys):
    assert main([str(folder), "--length", "20", "--examples", "1", "--out", str(tmp_path / "a")]) == 0
    assert "1 sequence(s) of 20 tokens" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 5\n")
    assert main([str(folder), "--ids", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "lengths [2, 3]" in capsys.readouterr().err
    bad.write_text("1 2 300\n")
    assert main([str(folder), "--ids", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "0..63" in capsys.readouterr().err


def test_a_few_indices_measure_less_and_read_the_same_boundary_profile(folder, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    rows = torch.randint(5, 64, (2, 32), generator=torch.Generator().manual_seed(4))
    rows[:, 20] = 2
    ids.write_text("\n".join(" ".join(str(int(v)) for v in row) for row in rows))
    every, few = tmp_path / "every", tmp_path / "few"
    assert main([str(folder), "--ids", str(ids), "--separator", "2", "--out", str(every)]) == 0
    assert main([str(folder), "--ids", str(ids), "--separator", "2", "--out", str(few), "--num-indices", "4"]) == 0
    assert "4 evenly spaced indices" in capsys.readouterr().out
    profiles = [json.loads((o / "boundary_profile.json").read_text())["profiles"] for o in (every, few)]
    for name, profile in profiles[0].items():  # the separator's neighbourhood is measured in full either way
        assert profiles[1][name] == pytest.approx(profile, abs=1e-6)
    assert main([str(folder), "--length", "8", "--out", str(tmp_path / "bad"), "--num-indices", "0"]) == 2
    assert "--num-indices must be >= 1" in capsys.readouterr().err


def test_a_head_budget_measures_that_many_heads_per_layer(folder, tmp_path, capsys):
    assert main([str(folder), "--length", "16", "--examples", "1", "--heads", "1", "--out", str(tmp_path / "h")]) == 0
    out = capsys.readouterr().out
    assert "1 heads per layer" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("model.layers.")]
    assert len(rows) == 2 and all(row[3] == "1" for row in rows)  # the ops column: one head of two
    assert main([str(folder), "--length", "8", "--out", str(tmp_path / "bad"), "--heads", "0"]) == 2
    assert "--heads must be >= 1" in capsys.readouterr().err
