"""TensorBoard: event files in the seed's folder, `<setting>/seed<k>/tb/` (`tensorboard --logdir RUNS_DIR`).

A continued run writes to the same folder with `purge_step` at its first new step: whatever an interrupted run
logged from there on is dropped by TensorBoard's readers, so no epoch appears twice.

>>> TensorBoardTracker.name, TensorBoardTracker.module
('tensorboard', 'tensorboard')
"""

from pathlib import Path

from bitfit_exp.train.tracking.base import Tracker

FOLDER = "tb"


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    module = "tensorboard"
    backfill = True

    @property
    def fix(self) -> str:
        return f"make {self.info.folder / FOLDER} a writable folder (disk space, permissions)"

    def scope(self) -> str:
        return str(self.info.folder / FOLDER)  # one seed's folder: other seeds still try theirs

    def open(self, previous: dict | None, first_step: int) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.info.folder / FOLDER
        self.writer = SummaryWriter(str(folder), purge_step=first_step, flush_secs=30)
        if previous is None:  # the config and tags once per run, as text (TensorBoard's TEXT tab)
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.info.params.items()), 0)
            self.writer.add_text("tags", "\n".join(f"    {k}: {v}" for k, v in self.info.tags.items()), 0)
        self.writer.flush()
        return {"run": FOLDER}

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # an epoch is on disk when the next one starts: a killed run keeps what it logged

    def finish(self, scalars: dict[str, float], step: int, tags: dict[str, str], artifacts: list[Path],
               ok: bool) -> None:
        self.log(scalars, step)
        self.writer.add_text("status", "finished" if ok else "diverged", step)
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()
