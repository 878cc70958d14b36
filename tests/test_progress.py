"""What a job prints while it runs: log lines when piped (steps, loss, speed, ETA of the seed and of the job), for
training, packed training, evaluation and test predictions; the same results with and without them."""

import json
import re
import subprocess

import pytest
import torch
from conftest import compose, quick
from safetensors.torch import load_file
from test_cli import RUN, bitfit_run, records

from bitfit_exp.train.packed import train_packed
from bitfit_exp.train.progress import JobClock, TrainProgress, mode
from bitfit_exp.train.runner import Prepared, start_seed

STEP = re.compile(r"^seed (\d) epoch (\d)/2 step (\d+)/(\d+) \((\d+)%\) loss ([\d.]+) ([\d.]+) it/s "
                  r"ETA seed (\S+) job (\S+)$")


def seconds(text: str) -> int:
    """'1h02m05s' -> 3725."""
    h, m, s = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)s", text).groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + int(s)


def test_piped_run_logs_steps_evaluation_and_predictions(tmp_path, tiny_bert_dir, glue_dir):
    # 40 rows / batch 8 = 5 steps per epoch, 2 epochs, 2 seeds: 10 steps per seed, 20 for the job.
    out = bitfit_run(*quick(tiny_bert_dir, tmp_path, "train.progress=auto", "train.log_every=1",
                            "train.log_every_s=null", "data.max_train_samples=40", "data.max_eval_samples=40",
                            "train.eval_batch_size=8", "seeds=[0,1]"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    steps = [m.groups() for line in lines if (m := STEP.match(line))]
    recorded = {json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in records(tmp_path)}
    for seed in "01":
        mine = [s for s in steps if s[0] == seed]
        assert [int(s[2]) for s in mine] == list(range(1, 11)) and {s[3] for s in mine} == {"10"}
        assert [int(s[4]) for s in mine] == [10 * i for i in range(1, 11)]
        assert all(0.5 < float(s[5]) < 1.0 for s in mine)  # a binary cross-entropy near log 2 = 0.69
        assert all(float(s[6]) > 0 for s in mine)
        eta_seed, eta_job = [seconds(s[7]) for s in mine], [seconds(s[8]) for s in mine]
        assert all(j >= s for s, j in zip(eta_seed, eta_job, strict=True))  # the job includes the seed
        # At the last step no step is left, only the last evaluation, estimated by the first one's time.
        assert abs(eta_seed[-1] - recorded[int(seed)]["epochs"][0]["eval_s"]) <= 1
    # While seed 1 trains, the job's ETA shrinks, and at its last step no more than a whole seed is left.
    job1 = [seconds(s[8]) for s in steps if s[0] == "1"]
    assert job1[-1] <= job1[0] + 1 and job1[-1] <= recorded[0]["timings"]["total_s"] + 1
    eval_lines = [line for line in lines if re.match(r"seed \d epoch \d eval validation: batch \d/5 \(\d+%\) "
                                                     r"[\d.]+ batch/s ETA \d+s$", line)]
    assert len(eval_lines) == 2 * 2 * 4  # seeds x epochs x batches 1-4 of 5 (the fifth ends with a summary)
    assert sum(bool(re.match(r"seed \d predict test: batch \d/5 ", line)) for line in lines) == 2 * 4
    epochs = [line for line in lines
              if re.match(r"seed \d epoch \d/2: loss [\d.]+, validation accuracy [\d.]+ \(", line)]
    assert len(epochs) == 4
    assert "\r" not in out.stdout + out.stderr  # no bar redrawn into a log file


def test_logging_does_not_change_results(tmp_path, tiny_bert_dir, glue_dir):
    silent, logged = tmp_path / "silent", tmp_path / "logged"
    assert bitfit_run(*quick(tiny_bert_dir, silent, "train.progress=false")).returncode == 0
    out = bitfit_run(*quick(tiny_bert_dir, logged, "train.progress=lines", "train.log_every=1", "train.log_every_s=0"))
    assert out.returncode == 0, out.stderr
    assert " step 6/6 " in out.stdout  # 24 rows / batch 8 = 3 steps x 2 epochs, all logged
    [a], [b] = records(silent), records(logged)
    assert a.relative_to(silent) == b.relative_to(logged)  # the same setting: logging keys are not in the hash
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert [(r["train_loss"], r["dev"], r["train"]) for r in ra["epochs"]] == \
        [(r["train_loss"], r["dev"], r["train"]) for r in rb["epochs"]]
    pa, pb = load_file(a.parent / "patch.safetensors"), load_file(b.parent / "patch.safetensors")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert (a.parent / "RTE.tsv").read_bytes() == (b.parent / "RTE.tsv").read_bytes()


def test_packed_training_logs_the_same_lines(tmp_path, tiny_bert_dir, glue_dir, capsys):
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "train.progress=lines", "train.log_every=2",
                         "train.log_every_s=null"))
    prepared = Prepared(cfg)
    cpu = torch.device("cpu")
    inits = []
    for seed in (0, 1):
        model, selection, _ = start_seed(cfg, seed, cpu)
        inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
    train_packed(model, selection, inits, [0, 1], [1e-3, 1e-2], prepared.train, prepared.train_probe, prepared.dev,
                 cfg, cpu, prepared.pad_id)
    lines = capsys.readouterr().out.splitlines()
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"packed x2 epoch \d/2 step (\d+)/6 .* ETA pack \S+ "
                                                                  r"job \S+$", line))]
    assert steps == [2, 4, 6]  # every 2nd step, counted across epochs
    assert sum(line.startswith(("seed 0 lr=0.001 epoch", "seed 1 lr=0.01 epoch")) for line in lines) == 4


def test_a_job_clock_counts_resumed_and_skipped_trainings():
    clock = JobClock(steps_each=10)
    clock.plan(3)
    cfg = compose("train.progress=lines", "train.log_every_s=null")
    progress = TrainProgress(cfg.train, "seed 0", steps_per_epoch=5, epochs=2, first_epoch=2, clock=clock)
    assert (progress.step_no, clock.total) == (5, 25)  # resumed after epoch 1: its 5 steps never run
    clock.drop()  # a seed another job took
    assert clock.total == 15
    for _ in range(5):
        progress.step([torch.tensor(0.5)])
    assert clock.done == 5 and progress.step_no == progress.total == 10


def test_progress_modes():
    assert mode(True) == "bar" and mode(False) == "quiet" and mode("lines") == "lines"
    assert mode("auto") == "lines"  # pytest captures stderr: not a terminal


@pytest.mark.parametrize("override, message", [("train.progress=bar", "train.progress"),
                                               ("train.log_every=0", "train.log_every"),
                                               ("train.log_every_s=-1", "train.log_every_s")])
def test_bad_progress_settings_are_one_line(tmp_path, tiny_bert_dir, override, message):
    out = subprocess.run([*RUN, *quick(tiny_bert_dir, tmp_path, override)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and message in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "hydra").exists()


def test_the_job_eta_counts_what_follows_the_steps_at_the_finished_trainings_pace():
    # At a training's last step its own steps are done, but its evaluation and test predictions are not: a
    # finished training that took 1 s per step, all in, says this one still needs ~its 10 s, and the next 10 s more.
    cfg = compose("train.progress=lines", "train.log_every_s=null")
    clock = JobClock(steps_each=10)
    clock.plan(3)
    clock.begin()
    clock.advance(10)
    clock.begin()
    assert clock.per_step() is not None and clock.walls == [clock.per_step()]
    clock.walls = [1.0]
    progress = TrainProgress(cfg.train, "seed 1", steps_per_epoch=5, epochs=2, first_epoch=1, clock=clock)
    for _ in range(10):
        progress.step([torch.tensor(0.5)])
    assert progress.seed_eta() < 1  # tiny steps, no evaluation measured yet
    assert progress.job_eta() == pytest.approx(20, abs=1)
