"""Packed training equals one-by-one training: K settings with their own seeds, learning rates and clipping."""

import pytest
import torch
from conftest import compose, quick, save_tiny

from bitfit_exp.train.packed import pack, train_packed
from bitfit_exp.train.runner import Prepared, start_seed
from bitfit_exp.train.trainer import train_seed

SEEDS, LRS = [0, 1, 2], [0.05, 0.01, 0.002]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def no_dropout_dir(request, tmp_path_factory):
    # Dropout draws from another random stream when packed; without it the two must agree to float tolerance.
    folder = tmp_path_factory.mktemp(f"tiny_{request.param}_nodrop")
    return save_tiny(folder, request.param, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("method, padding, optim", [("bitfit", "max_length", "adamw"), ("bm2_bq", "longest", "adamw"),
                                                    ("frozen", "longest", "adamw"),
                                                    ("bitfit", "longest", "adamw_hf2021")])
def test_packed_equals_separate_runs(method, padding, optim, no_dropout_dir, tmp_path, glue_dir):
    # grad_clip 0.05 triggers on every step: a global norm over settings would couple them.
    cfg = compose(*quick(no_dropout_dir, tmp_path, f"method={method}", f"data.padding={padding}", "train.epochs=2",
                         "train.grad_clip=0.05", "train.select=last", "optim.weight_decay=0.01", f"optim={optim}"))
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


def packed_runs(prepared, cfg, seeds, lrs):
    inits = []
    for seed in seeds:
        model, selection, _ = start_seed(cfg, seed, torch.device("cpu"))
        inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
    beats = []
    results = train_packed(model, selection, inits, seeds, lrs, prepared.train, prepared.train_probe, prepared.dev,
                           cfg, torch.device("cpu"), prepared.pad_id, heartbeat=lambda: beats.append(1))
    assert len(beats) > cfg.train.epochs * len(prepared.train) // cfg.train.batch_size  # claims kept alive
    return results


def assert_same_training(a, b, rtol=1e-5):
    assert [r["train_loss"] for r in b.epochs] == pytest.approx([r["train_loss"] for r in a.epochs], rel=rtol)
    assert [r["dev"] for r in b.epochs] == [r["dev"] for r in a.epochs]
    for name in a.chosen_state:
        torch.testing.assert_close(b.chosen_state[name], a.chosen_state[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_setting_trains_the_same_in_any_pack(kind, tiny_bert_dir, tiny_roberta_dir, tmp_path, glue_dir):
    # Dropout on (0.1, attention probabilities included): each setting's masks come from its own stream, so
    # training it in a pack of three equals training it alone. One shared stream would not (checked below).
    model_dir = {"bert": tiny_bert_dir, "roberta": tiny_roberta_dir}[kind]
    cfg = compose(*quick(model_dir, tmp_path, "data.padding=longest", "train.epochs=2", "train.select=last",
                         "train.grad_clip=0.05"))
    prepared = Prepared(cfg)
    together = packed_runs(prepared, cfg, SEEDS, LRS)
    for i, (seed, lr) in enumerate(zip(SEEDS, LRS, strict=True)):
        assert_same_training(packed_runs(prepared, cfg, [seed], [lr])[0], together[i])
    cfg.train.packed_dropout = "shared"
    shared = packed_runs(prepared, cfg, SEEDS, LRS)
    alone = packed_runs(prepared, cfg, [SEEDS[1]], [LRS[1]])[0]
    assert shared[1].epochs[0]["train_loss"] != pytest.approx(alone.epochs[0]["train_loss"], rel=1e-5)


def test_dropout_streams_are_per_setting_and_restorable():
    from bitfit_exp.train.packed import DropoutStreams

    x = torch.ones(3 * 4, 5, 6)
    three = DropoutStreams([7, 8, 9], "cpu").keep(x, 0.5).view(3, 4, 5, 6)
    alone = DropoutStreams([8], "cpu")
    assert torch.equal(alone.keep(x[:4], 0.5), three[1]) and not torch.equal(three[0], three[1])
    assert set(three.unique().tolist()) == {0.0, 2.0}  # kept entries are scaled by 1/(1-p)
    state = alone.states()
    first = alone.keep(x[:4], 0.5)
    alone.set_states(state)
    assert torch.equal(alone.keep(x[:4], 0.5), first)


def run_cli(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", "from bitfit_exp.commands.run import run; run()", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def read_records(folder):
    import json

    return {(r["config"]["optim"]["lr"], r["seed"]): r
            for r in (json.loads(p.read_text()) for p in folder.glob("**/record.json"))}


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_packed_lr_grid_job_stops_and_resumes_in_another_pack(tmp_path, tiny_bert_dir, glue_dir):
    args = ["train.packed=true", "train.pack_lrs=true", "seeds=[0,1]", "train.epochs=3", "train.select=last"]
    whole = run_cli(*quick(tiny_bert_dir, tmp_path / "whole", *args))
    assert whole.returncode == 0, whole.stderr
    assert "packed x8:" in whole.stdout and whole.stdout.count("over 2 seeds") == 4  # bitfit's grid has 4 lrs
    records = read_records(tmp_path / "whole")
    assert sorted(records) == [(lr, s) for lr in (1e-4, 4e-4, 7e-4, 1e-3) for s in (0, 1)]
    for (lr, _), r in records.items():
        assert r["setting"]["lr"] == lr and f"/lr{lr:g}-" in r["setting"]["dir"]
        assert r["packed"]["settings"] == 8 and r["packed"]["dropout"] == "per_setting"
    assert len({r["epochs"][-1]["train_loss"] for r in records.values()}) == 8
    assert not list((tmp_path / "whole").glob("**/claim.json")) and not list((tmp_path / "whole").glob("**/*.pt"))

    cut = tmp_path / "cut"
    stopped = run_cli(*quick(tiny_bert_dir, cut, *args, "train.stop_after_epochs=1"))
    assert stopped.returncode == 3 and "stopped after epoch 1" in stopped.stderr
    assert len(list(cut.glob("**/seed*/checkpoint.pt"))) == 8 and not list(cut.glob("**/record.json"))
    # Seed 1 of every lr resumes in a pack of 4, then seed 0 of every lr in another pack of 4.
    part = run_cli(*quick(tiny_bert_dir, cut, *args[:2], "seeds=[1]", *args[3:]))
    assert part.returncode == 0, part.stderr
    assert "packed x4:" in part.stdout and "resumed after epoch 1" in part.stdout
    rest = run_cli(*quick(tiny_bert_dir, cut, *args))
    assert rest.returncode == 0 and rest.stdout.count("1 already finished") == 4
    resumed = read_records(cut)
    assert resumed.keys() == records.keys()
    for key, r in records.items():
        assert resumed[key]["resumed_after_epoch"] == 1 and resumed[key]["packed"]["settings"] == 4
        assert [e["train_loss"] for e in resumed[key]["epochs"]] == pytest.approx(
            [e["train_loss"] for e in r["epochs"]], rel=1e-5)
        assert [e["dev"] for e in resumed[key]["epochs"]] == [e["dev"] for e in r["epochs"]]


def test_packed_falls_back_to_one_by_one_for_other_methods(tmp_path, tiny_bert_dir, glue_dir):
    out = run_cli(*quick(tiny_bert_dir, tmp_path, "train.packed=true", "seeds=[0,1]", "method=rand_uniform",
                         "train.epochs=1"))
    assert out.returncode == 0, out.stderr
    assert "note: rand_uniform cannot be packed" in out.stdout and "over 2 seeds" in out.stdout
    assert all("packed" not in r for r in read_records(tmp_path).values())


def test_checkpoints_of_the_other_trainer_or_cut_short_start_over(tmp_path, capsys):
    from bitfit_exp.train.checkpoints import read_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    rng = dict.fromkeys(["python", "numpy", "torch", "order"])
    save_checkpoint(path, mode="single", epoch=2, trained={}, optimizer={}, schedule={}, rng=rng, epochs=[],
                    best=None, best_state=None, train_s=0.0, eval_s=0.0)
    assert read_checkpoint(path, "single")["epoch"] == 2 and read_checkpoint(path, "packed") is None
    assert "written by the single trainer; starting this seed over" in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:20])
    assert read_checkpoint(path, "single") is None and "unreadable checkpoint" in capsys.readouterr().out


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
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
    assert [(r["mode"], r["k"]) for r in rows][:3] == [("paper", 1), ("full", 1), ("packed", 2)]
    assert len(rows) == 2 + 2 * 2 * 2  # baselines + dynamic padding x bf16 x packed dropout
    assert all(r["samples_per_s_per_setting"] > 0 and r["device"] == "CPU" for r in rows)
    assert all(r["fwd_input_grad_tflops"] > 0 and r["pct_bf16_peak"] is None for r in rows)


def test_bench_flop_count_and_peaks():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # BERT-base, one row of 128 tokens: 2 FLOPs per encoder weight per token (85.0M weights in its linear layers)
    # plus QK^T and AV, doubled for the input gradient: 44.7 GFLOP.
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(**bench.SHAPES["bert_base"])).encoder
    weights = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    assert weights == 84_934_656
    expected = 2 * (2 * weights * 128 + 12 * 2 * 2 * 128 * 128 * 768)
    assert bench.fwd_input_grad_flops("bert_base", 1, 128) == expected == pytest.approx(44.69e9, rel=1e-3)
    assert bench.fwd_input_grad_flops("bert_base", 8, 64) < bench.fwd_input_grad_flops("bert_base", 8, 128) / 2
    assert bench.bf16_peak("NVIDIA H100 80GB HBM3") == 989.4 and bench.bf16_peak("NVIDIA H100 PCIe") == 756.0
    assert bench.bf16_peak("NVIDIA H200") == 989.4 and bench.bf16_peak("Tesla T4") is None


def test_a_pack_too_big_for_the_device_is_one_clear_error(tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    import bitfit_exp.train.runner as runner
    from bitfit_exp.core.errors import UserError

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(runner, "train_packed", out_of_memory)
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "train.packed=true", "seeds=[0,1,2]"))
    with pytest.raises(UserError, match=r"packed x3 \(3 x batch 8 rows\) does not fit in cpu memory; pack fewer"):
        runner.run_job(cfg)
    assert not list(tmp_path.glob("**/claim.json")) and not list(tmp_path.glob("**/record.json"))


def test_seek_puts_the_schedule_where_stepping_would():
    from bitfit_exp.train.packed import PackedAdamW, seek
    from bitfit_exp.train.trainer import lr_schedule

    cfg = compose("optim.warmup_ratio=0.5", "train.epochs=2")  # 10 steps of warmup over 2 x 10 steps
    stepped, sought = (PackedAdamW([torch.nn.Parameter(torch.zeros(3, 4))], [0.1, 0.2, 0.3]) for _ in range(2))
    a, b = lr_schedule(stepped, 10, cfg), lr_schedule(sought, 10, cfg)
    for _ in range(7):
        stepped.step()
        a.step()
    seek(b, 7)
    assert a.get_last_lr() == b.get_last_lr() == [pytest.approx(0.8)]
    for optimizer, schedule in ((stepped, a), (sought, b)):
        optimizer.step()
        schedule.step()
    assert a.get_last_lr() == b.get_last_lr() == [pytest.approx(0.9)]
