"""What a person sees while a job runs: a tqdm bar on a terminal, or plain log lines when the output is piped to a
file (a SLURM job), every `train.log_every_s` seconds and/or every `train.log_every` steps.

`train.progress`: auto (a bar when stderr is a terminal, else lines) | true (bar) | lines | false (neither).
A training line says the seed's step out of its total, the epoch's running mean loss, the speed, and how long the
seed (packed training: the pack) and the whole job (every seed and setting this process trains) still need:

    seed 0 epoch 1/2 step 79/250 (31%) loss 0.6740 2.60 it/s ETA seed 1m06s job 4m23s

(`make demo` piped to a file, on a loaded 2-core CPU). Evaluation and test prediction say which split and how far:
`seed 0 epoch 1 eval validation: batch 6/7 (85%) 0.19 batch/s ETA 5s`. Lines draw no random numbers and change no
tensor (the running loss is read from losses already computed): a run computes the same numbers with and without
them, bit for bit (tests/test_progress.py).

>>> clock = JobClock(steps_each=100)
>>> clock.plan(3); clock.advance(25); clock.drop()
>>> clock.total, clock.done
(200, 25)
>>> duration(3725.2)
'1h02m05s'
"""

import sys
import time
from collections.abc import Iterable, Iterator

import torch
from tqdm.auto import tqdm

BAR, LINES, QUIET = "bar", "lines", "quiet"


def mode(progress) -> str:
    """BAR, LINES or QUIET for a `train.progress` value; auto asks whether stderr (where tqdm draws) is a terminal."""
    if progress == "auto":
        return BAR if sys.stderr.isatty() else LINES
    return {True: BAR, "lines": LINES, False: QUIET}[progress]


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m05s, 1h02m05s.

    >>> duration(0.4), duration(185)
    ('0s', '3m05s')
    """
    s = max(0, round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def say(line: str) -> None:
    print(line, flush=True)  # stdout, as the runner's own lines: one log, in order


class JobClock:
    """The training steps of a whole job (all its seeds and settings, each training `steps_each` steps): planned,
    done, and the wall time each finished training took per step, loading, evaluation and test predictions
    included, so a line can say when the job ends."""

    def __init__(self, steps_each: int):
        self.each, self.total, self.done, self.t0 = steps_each, 0, 0, time.perf_counter()
        self.started, self.done_at_start, self.walls = None, 0, []

    def plan(self, trainings: int = 1) -> None:
        self.total += trainings * self.each

    def advance(self, steps: int) -> None:
        self.done += steps

    def drop(self, steps: int | None = None) -> None:
        """Planned steps that will not run: a resumed training's finished epochs, or (None) a whole training that
        another job took."""
        self.total = max(self.done, self.total - (self.each if steps is None else steps))

    def begin(self) -> None:
        """A training starts: the one before it (its predictions and records, this one's loading) is over."""
        now = time.perf_counter()
        if self.started is not None and self.done > self.done_at_start:
            self.walls.append((now - self.started) / (self.done - self.done_at_start))
        self.started, self.done_at_start = now, self.done

    def per_step(self) -> float | None:
        """Wall seconds per step of the finished trainings, everything around their steps included; None yet."""
        return sum(self.walls) / len(self.walls) if self.walls else None

    def eta(self) -> float | None:
        """Before any training finished: the steps left at the job's pace so far."""
        elapsed = time.perf_counter() - self.t0
        return (self.total - self.done) * elapsed / self.done if self.done and elapsed > 0 else None


class _Every:
    """Whether a line is due: `every_s` seconds or `every` items since the last one (None: that trigger off)."""

    def __init__(self, every: int | None, every_s: float | None):
        self.every, self.every_s = every, every_s
        self.count, self.last = 0, time.perf_counter()

    def due(self) -> bool:
        self.count += 1
        now = time.perf_counter()
        if (self.every and self.count >= self.every) or (self.every_s is not None and now - self.last >= self.every_s):
            self.count, self.last = 0, now
            return True
        return False


class TrainProgress:
    """Progress of one training (a seed, or a pack of settings): `epoch(...)` wraps an epoch's batches (a bar, or
    the batches themselves), `step(losses)` counts one step and writes a line when one is due, `evaluated(s)` adds
    an epoch's evaluation time to the seed's estimate."""

    def __init__(self, train_cfg, name: str, steps_per_epoch: int, epochs: int, first_epoch: int,
                 clock: JobClock | None = None, unit: str = "seed"):
        self.mode, self.name, self.unit = mode(train_cfg.progress), name, unit  # unit: "seed", or "pack" of settings
        self.per_epoch, self.epochs = steps_per_epoch, epochs
        self.step_no = (first_epoch - 1) * steps_per_epoch
        self.total = epochs * steps_per_epoch
        if clock is None:  # a training outside a job (the library's train_seed alone): the job is this training
            clock = JobClock(self.total)
            clock.plan()
        self.clock = clock
        if self.step_no:
            clock.drop(self.step_no)
        clock.begin()
        self.every = _Every(train_cfg.get("log_every"), train_cfg.get("log_every_s"))
        self.train_s, self.ran, self.eval_s, self.evals = 0.0, 0, 0.0, 0
        self.epoch_no, self.t = first_epoch, time.perf_counter()
        self.t_start, self.first_step = self.t, self.step_no

    def epoch(self, items: Iterable, epoch: int) -> Iterable:
        self.epoch_no, self.t = epoch, time.perf_counter()
        self.every.last = self.t  # the evaluation had lines of its own: no line for an epoch's first step
        if self.mode != BAR:
            return items
        return tqdm(items, total=self.per_epoch, desc=f"{self.name} epoch {epoch}/{self.epochs}", leave=False)

    def step(self, losses: list[torch.Tensor]) -> None:
        self.step_no += 1
        self.ran += 1
        self.clock.advance(1)
        now = time.perf_counter()
        self.train_s, self.t = self.train_s + now - self.t, now
        if self.mode == LINES and self.every.due():
            say(self.line(float(torch.stack(losses).float().mean())))  # the one sync, on a log line only
            self.t = time.perf_counter()  # the sync and the print are not training time

    def evaluated(self, seconds: float) -> None:
        self.eval_s, self.evals = self.eval_s + seconds, self.evals + 1

    def epoch_done(self, name: str, row: dict, split: str, metric: str) -> None:
        """One line per finished epoch (`name`: the seed, or a setting of a pack): its loss and main dev score."""
        if self.mode == LINES:
            say(f"{name} epoch {row['epoch']}/{self.epochs}: loss {row['train_loss']:.4f}, {split} {metric} "
                f"{100 * row['dev'][split][metric]:.2f} ({duration(row['train_s'])} training, "
                f"{duration(row['eval_s'])} evaluation)")

    def seed_eta(self) -> float:
        rate = self.ran / self.train_s if self.train_s > 0 else 0.0
        left = self.total - self.step_no
        evals_left = self.epochs - self.epoch_no + 1  # this epoch's evaluation is still to come
        return (left / rate if rate else 0.0) + evals_left * (self.eval_s / self.evals if self.evals else 0.0)

    def job_eta(self) -> float | None:
        """This training's time left, and every planned training after it at the pace of the finished ones (their
        whole wall time per step); before one finished, the job's pace so far. Never less than the seed's."""
        here = self.seed_eta()
        per_step = self.clock.per_step()
        if per_step is None:
            job = self.clock.eta()
            return None if job is None else max(job, here)
        # the finished trainings' pace covers what the seed ETA does not: the last evaluation, test predictions
        here = max(here, per_step * (self.total - self.first_step) - (time.perf_counter() - self.t_start))
        after = max(0, self.clock.total - self.clock.done - (self.total - self.step_no))
        return here + after * per_step

    def line(self, loss: float) -> str:
        rate = self.ran / self.train_s if self.train_s > 0 else 0.0
        job = self.job_eta()
        text = (f"{self.name} epoch {self.epoch_no}/{self.epochs} step {self.step_no}/{self.total} "
                f"({100 * self.step_no // self.total}%) loss {loss:.4f} {rate:.2f} it/s ETA {self.unit} "
                f"{duration(self.seed_eta())}")
        return text + (f" job {duration(job)}" if job is not None else "")


def batches_progress(items: Iterable, total: int, desc: str, train_cfg) -> Iterator:
    """`items` (evaluation or prediction batches) with a bar on a terminal or a line every `train.log_every_s`
    seconds when piped (and every `train.log_every` batches when set), plus one closing line once it took longer
    than that interval."""
    shown = mode(train_cfg.progress)
    if shown == BAR:
        yield from tqdm(items, total=total, desc=desc, leave=False)
        return
    if shown == QUIET:
        yield from items
        return
    every, t0 = _Every(train_cfg.get("log_every"), train_cfg.get("log_every_s")), time.perf_counter()
    lines = 0
    for i, item in enumerate(items, 1):
        yield item
        if i < total and every.due():
            elapsed = time.perf_counter() - t0
            say(f"{desc}: batch {i}/{total} ({100 * i // total}%) {i / elapsed:.2f} batch/s "
                f"ETA {duration((total - i) * elapsed / i)}")
            lines += 1
    if lines:
        say(f"{desc}: {total} batches in {duration(time.perf_counter() - t0)}")
