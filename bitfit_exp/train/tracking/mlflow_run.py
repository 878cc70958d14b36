"""MLflow: one run per seed in `MLFLOW_TRACKING_URI`, by default a SQLite file in the runs dir
(`mlflow ui --backend-store-uri sqlite:///RUNS_DIR/mlflow.db`, artifacts in RUNS_DIR/mlartifacts); experiment
`MLFLOW_EXPERIMENT_NAME`, default bitfit-exp. The seed's patch and record are attached as artifacts.

>>> default_uri(Path("/runs"))
'sqlite:////runs/mlflow.db'
>>> search_filter({"bitfit.setting": "abcd1234", "bitfit.seed": "0"})
"tags.`bitfit.setting` = 'abcd1234' and tags.`bitfit.seed` = '0'"
"""

import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from bitfit_exp.train.tracking.base import Tracker

EXPERIMENT = "bitfit-exp"
DB = "mlflow.db"


def default_uri(runs_dir: Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / DB}"


def search_filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def _reachable(uri: str) -> None:
    """An http(s) server answers a TCP connection within 5 s; else ConnectionError (MLflow itself would retry for
    minutes, holding up training)."""
    url = urlparse(uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {uri} ({e.strerror or e})") from None


class MLflowTracker(Tracker):
    name = "mlflow"
    module = "mlflow"
    backfill = True

    @property
    def fix(self) -> str:
        return f"set MLFLOW_TRACKING_URI (now {self.where()}) to a reachable server or a writable sqlite:/// file"

    def scope(self) -> str:
        return self.where()

    def _client(self):
        # A failing server costs a few short retries, not MLflow's default minutes (the user's settings win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        for name in ("mlflow.store.db.utils", "alembic"):  # schema set-up chatter on a new SQLite store
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri = self.where()
        _reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        return self.client

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # Next to the default store, not ./mlruns of whatever folder the job started in.
        location = None if os.environ.get("MLFLOW_TRACKING_URI") \
            else (self.info.runs_dir / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            if (found := self.client.get_experiment_by_name(name)) is None:
                raise
            return found.experiment_id  # another job of the sweep created it meanwhile

    def where(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(self.info.runs_dir)

    def continues(self, previous: dict) -> bool:
        return previous.get("uri") == self.where()

    def open(self, previous: dict | None, first_step: int) -> dict:
        from mlflow.entities import Param

        self._client()
        if previous:
            run = self.client.get_run(previous["run"])
            self.run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(self.run_id, "RUNNING")
            # A run killed between logging an epoch and noting it in trackers.json holds one more epoch than noted.
            logged = self.client.get_metric_history(self.run_id, "train/epoch")
            return {"run": self.run_id, "uri": self.uri, "last_epoch": int(max((m.value for m in logged), default=0))}
        run = self.client.create_run(self._experiment(), run_name=self.info.name, tags=self.info.tags)
        self.run_id = run.info.run_id
        params = [Param(k[:250], v[:6000]) for k, v in self.info.params.items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return {"run": self.run_id, "uri": self.uri}

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def finish(self, scalars: dict[str, float], step: int, tags: dict[str, str], artifacts: list[Path],
               ok: bool) -> None:
        from mlflow.entities import RunTag

        self.log(scalars, step)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")

    def abort(self) -> None:
        self.client.set_terminated(self.run_id, "KILLED")

    def find_finished(self, record_digest: str) -> bool:
        self._client()
        experiment = self.client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
        if experiment is None:
            return False
        keys = {k: self.info.tags[k] for k in ("bitfit.setting", "bitfit.seed")}
        runs = self.client.search_runs([experiment.experiment_id],
                                       search_filter({**keys, "bitfit.record": record_digest}), max_results=1)
        return bool(runs)
