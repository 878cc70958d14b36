"""Packed training equals one-by-one training: K settings with their own seeds, learning rates and clipping."""

import pytest
import torch
from conftest import compose, quick, save_tiny

from bitfit_exp.packed import pack, train_packed
from bitfit_exp.runner import Prepared, start_seed
from bitfit_exp.training import train_seed

SEEDS, LRS = [0, 1, 2], [0.05, 0.01, 0.002]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def no_dropout_dir(request, tmp_path_factory):
    # Dropout draws from another random stream when packed; without it the two must agree to float tolerance.
    folder = tmp_path_factory.mktemp(f"tiny_{request.param}_nodrop")
    return save_tiny(folder, request.param, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("method, padding", [("bitfit", "max_length"), ("bm2_bq", "longest"), ("frozen", "longest")])
def test_packed_equals_separate_runs(method, padding, no_dropout_dir, tmp_path, glue_dir):
    # grad_clip 0.05 triggers on every step: a global norm over settings would couple them.
    cfg = compose(*quick(no_dropout_dir, tmp_path, f"method={method}", f"data.padding={padding}", "train.epochs=2",
                         "train.grad_clip=0.05", "train.select=last", "optim.weight_decay=0.01"))
    prepared = Prepared(cfg)
    cpu = torch.device("cpu")
    alone = []
    for seed, lr in zip(SEEDS, LRS, strict=True):
        cfg.optim.lr = lr
        model, selection, _ = start_seed(cfg, seed, cpu)
        alone.append(train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, seed,
                                cpu, prepared.pad_id))
    inits = []
    for seed in SEEDS:
        model, selection, _ = start_seed(cfg, seed, cpu)
        inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
    packed = train_packed(model, selection, inits, SEEDS, LRS, prepared.train, prepared.train_probe, prepared.dev,
                          cfg, cpu, prepared.pad_id)
    for a, b in zip(alone, packed, strict=True):
        assert [r["train_loss"] for r in b.epochs] == pytest.approx([r["train_loss"] for r in a.epochs], rel=1e-5)
        assert [r["dev"] for r in b.epochs] == [r["dev"] for r in a.epochs]
        assert a.chosen_state.keys() == b.chosen_state.keys()
        for name in a.chosen_state:
            torch.testing.assert_close(b.chosen_state[name], a.chosen_state[name], rtol=1e-4, atol=1e-5)  # Adam trajectories, float32
    moved = [max((packed[i].chosen_state[n] - inits[i][n]).abs().max() for n in inits[i]) for i in range(3)]
    assert all(m > 1e-4 for m in moved) and len({round(float(m), 6) for m in moved}) == 3


def test_pack_refuses_what_it_cannot_share(tiny_bert_dir, tmp_path):
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "method=rand_uniform"))
    model, selection, _ = start_seed(cfg, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="masked methods"):
        pack(model, selection, 2)
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "method=full"))
    model, selection, _ = start_seed(cfg, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="word_embeddings"):
        pack(model, selection, 2)


def test_packed_run_through_the_cli(tmp_path, tiny_bert_dir, glue_dir):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = [sys.executable, "-c", "from bitfit_exp.cli import run; run()"]
    out = subprocess.run([*run, *quick(tiny_bert_dir, tmp_path, "train.packed=true", "seeds=[0,1,2]")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "packed x3:" in out.stdout and "over 3 seeds" in out.stdout
    records = sorted((json.loads(p.read_text()) for p in tmp_path.glob("**/record.json")), key=lambda r: r["seed"])
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert all(r["packed"] == {"settings": 3, "seeds": [0, 1, 2]} for r in records)
    assert len({r["epochs"][-1]["train_loss"] for r in records}) == 3  # three different settings, not one
    assert not list(tmp_path.glob("**/claim.json"))
    bad = subprocess.run([*run, *quick(tiny_bert_dir, tmp_path, "train.packed=true", "seeds=[0,1]",
                                       "method=rand_uniform")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "error: train.packed=true needs a bias-family method" in bad.stderr


def test_bench_script_runs_and_writes_json(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--shape", "tiny", "--device", "cpu",
                          "--steps", "1", "--warmup", "0", "--packed", "2", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [(r["mode"], r["k"]) for r in rows][:3] == [("paper", 1), ("full", 1), ("packed", 2)] and len(rows) == 6
    assert all(r["samples_per_s_per_setting"] > 0 and r["device"] == "CPU" for r in rows)
