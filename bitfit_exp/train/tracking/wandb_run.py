"""Weights & Biases: one run per seed, in the mode W&B's environment says (`WANDB_MODE=offline` writes it under
`<seed folder>/wandb/` for `wandb sync`); project `WANDB_PROJECT`, default bitfit-exp. A continued seed resumes its
run by id.

>>> WandbTracker.name, WandbTracker.module
('wandb', 'wandb')
"""

import os
import uuid
from pathlib import Path

from bitfit_exp.train.tracking.base import Tracker


class WandbTracker(Tracker):
    name = "wandb"
    module = "wandb"
    fix = "run `wandb login`, or set WANDB_MODE=offline (then `wandb sync`)"

    def scope(self) -> str:
        return f"{os.environ.get('WANDB_MODE')}:{os.environ.get('WANDB_PROJECT')}"

    def open(self, previous: dict | None, first_step: int) -> dict:
        import wandb

        run_id = previous["run"] if previous else uuid.uuid4().hex[:12]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "bitfit-exp"), id=run_id, resume="allow",
                              name=self.info.name, dir=str(self.info.folder), config=self.info.params,
                              tags=[self.info.tags["bitfit.task"], self.info.tags["bitfit.method"]],
                              reinit="create_new")  # a packed job has several runs open at once
        self.run.summary.update(self.info.tags)
        return {"run": run_id}

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self, scalars: dict[str, float], step: int, tags: dict[str, str], artifacts: list[Path],
               ok: bool) -> None:
        self.run.summary.update({**scalars, **tags})
        self.run.finish(exit_code=0 if ok else 1)

    def abort(self) -> None:
        self.run.finish(exit_code=1)
