"""MLflow, behind a small interface: the one module that imports mlflow.

Default store: ``sqlite:///runs/mlflow.db`` with artifacts in ``runs/artifacts`` (both
overridable; ``MLFLOW_TRACKING_URI`` is honoured through the config's default).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from .outages import RETRY_SECONDS, Backoff, StoreUnavailable, retrying, transient

log = logging.getLogger("ess_reg")
DEFAULT_URI = "sqlite:///runs/mlflow.db"  # the store ess-train writes to and the readers read by default
PARENT_RUN_ENV = "ESS_REG_PARENT_RUN_ID"  # set by a multirun's parent run for its jobs
SWEEP_KEYS_ENV = "ESS_REG_SWEEP_KEYS"  # the swept keys, comma-separated: jobs are named by them
# MLflow 3 opens an experiment in its GenAI view unless told it holds model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become strings."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise ``ValueError`` unless ``path`` is, or can be made, a writable folder; creates nothing."""
    folder = Path(path)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ValueError(f"{what}={path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what}={path}: {existing} is not writable")


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with the reason, on a store URI that cannot keep runs: an unknown scheme, an
    in-memory database, an unwritable SQLite path, an HTTP server nobody answers at."""
    from urllib.parse import urlparse

    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"tracking.uri must be a store URI such as sqlite:///runs/mlflow.db, got {uri!r}")
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if path in ("", ":memory:") or path.endswith("/"):
            raise ValueError(f"tracking.uri={uri} keeps nothing (an in-memory database or no file); give a file, "
                             "e.g. sqlite:///runs/mlflow.db")
        file = Path(path)
        if file.exists() and (not file.is_file() or not os.access(file, os.R_OK | os.W_OK)):
            raise ValueError(f"tracking.uri={uri}: {file} is not a readable and writable file")
        check_writable_dir(file.parent, "tracking.uri")
    elif parsed.scheme in ("http", "https"):
        import socket

        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        if not host:
            raise ValueError(f"tracking.uri={uri} names no host")
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            raise ValueError(f"tracking.uri={uri}: no tracking server answers at {host}:{port} ({err}); start one "
                             "with `mlflow server` or use sqlite:///runs/mlflow.db") from None
    elif parsed.scheme == "file":
        check_writable_dir(parsed.path, "tracking.uri")
    elif not parsed.scheme:
        raise ValueError(f"tracking.uri={uri} is not a store URI (no scheme); use sqlite:///path.db, "
                         "http(s)://host:port or file:///folder")
    else:
        raise ValueError(f"tracking.uri={uri}: unknown store scheme {parsed.scheme!r}; use sqlite:///path.db, "
                         "http(s)://host:port or a folder")


def check_readable_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a store that cannot be read: a missing SQLite file or one that is not an
    SQLite database, a server nobody answers at within ``timeout`` seconds (MLflow itself would
    retry for minutes)."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is None or not path.is_file():
            raise ValueError(f"no store at {uri}")
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"{uri}: {path} is not an SQLite database (not an MLflow store)")
    elif parsed.scheme in ("http", "https"):
        check_store(uri, timeout)


def _ensure_sqlite_dir(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialize the first use of a SQLite store across processes (a lock file beside it):
    MLflow creates its schema on first use, and two processes creating it at once collide."""
    path = _sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): no serialization
        fcntl = None
    _ensure_sqlite_dir(uri)
    if path is None or fcntl is None:
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_count(path: Path) -> int | None:
    """How many runs a SQLite store file holds (``None``: no runs table, e.g. a half-made store)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return None


def open_store(uri: str) -> MlflowClient:
    """A client of a usable store at ``uri``. The first use of a SQLite store (which creates its
    schema) holds a lock, so concurrent first runs do not collide; a store whose creation was
    interrupted (it holds no run) is moved aside to ``<file>.broken-<time>`` and made anew."""
    with _store_lock(uri):
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # creates or checks the schema
            return client
        except Exception as err:
            path = _sqlite_path(uri)
            if path is None or not path.is_file():
                raise
            runs = _run_count(path)
            if runs:
                raise ValueError(f"the MLflow store {path} cannot be opened ({str(err).splitlines()[0]}); it holds "
                                 f"{runs} runs, so it is left as it is (try `mlflow db upgrade {uri}`)") from None
            broken = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(broken)
            log.warning("ess-reg: the store %s was left half-made (its creation was interrupted) and held no run; "
                        "moved it to %s and made a new one", path, broken)
            _forget_engine(uri)
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
            return client


def _forget_engine(uri: str) -> None:
    """Drop MLflow's cached database engine for ``uri``: its pooled connections still point at
    the file that was moved aside."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engines = SqlAlchemyStore._engine_map
    except (ImportError, AttributeError):
        return
    for key in [k for k in engines if k == uri]:
        engines.pop(key).dispose()


# ---- where a person looks: the MLflow UI ------------------------------------------------------
# MLflow 3 opens every page in its GenAI view unless the page's URL (the part after '#') says
# workflowType=machine_learning, or the user has once clicked "Model training" in the UI, which
# the browser then remembers; the experiment tag above does not decide it (MLflow 3.17). So every
# link printed carries the parameter, and a run list is sorted by accuracy, which also lists a
# sweep's children flat instead of folded under their parent.
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
ML_VIEW = "workflowType=machine_learning"


def ui_command(uri: str) -> str | None:
    """The command that serves the UI for the store ``uri``; None for a tracking server, which
    serves its own UI."""
    return None if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"


def ui_address(uri: str) -> str:
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training view."""
    return f"{ui_address(uri)}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


# A saved view of the run list, stored on the experiment as MLflow's UI stores a view it shares
# (an experiment tag read by MLflow 3's run list): the columns a researcher compares, best accuracy
# first (sorted by a metric, MLflow lists a sweep's children instead of folding them under their
# parent). A UI that does not know the tag ignores it; the link still opens the run list.
VIEW_KEY = "ess-reg"
VIEW_COLUMNS = ("params.`model`", "params.`penalty`", "params.`task.num_kv_pairs`", "params.`seed`",
                "metrics.`valid/accuracy`", "metrics.`ess/util`", "metrics.`ess/per_kv`", "params.`verdict`")


def runs_view_tag() -> dict[str, str]:
    state = {"selectedColumns": list(VIEW_COLUMNS), "orderByKey": "metrics.`valid/accuracy`", "orderByAsc": False}
    now = int(time.time() * 1000)
    view = {"name": "ess-reg: accuracy, ESS, verdict", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return {f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(view)}


def runs_url(uri: str, experiment_id: str) -> str:
    """An experiment's run list in the model-training view, through the saved view above."""
    return f"{ui_address(uri)}/#/experiments/{experiment_id}/runs?{ML_VIEW}&viewStateShareKey={VIEW_KEY}"


def compare_url(uri: str, experiment_id: str, run_ids: list[str]) -> str:
    """The compare page of ``run_ids`` in the model-training view (``runs`` must come first:
    the page reads it from the start of the query)."""
    runs = ",".join(f"%22{r}%22" for r in run_ids)
    return f"{ui_address(uri)}/#/compare-runs?runs=%5B{runs}%5D&experiments=%5B%22{experiment_id}%22%5D&{ML_VIEW}"


def where_to_look(uri: str, experiment_id: str, *, run_id: str | None = None, compare: list[str] | None = None) -> str:
    """The lines that tell a person how to see a run (or a sweep) in the UI."""
    command = ui_command(uri)
    lines = [f"look at it: {command}   then open" if command else "look at it in the tracking server's UI:"]
    if run_id is not None:
        lines.append(f"  the run:      {run_url(uri, experiment_id, run_id)}")
    if compare:
        lines.append(f"  compare them: {compare_url(uri, experiment_id, compare)}")
    lines.append(f"  all runs:     {runs_url(uri, experiment_id)}")
    return "\n".join(lines)


def experiment_id(uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment``, creating it if needed."""
    client = open_store(uri)
    mlflow.set_tracking_uri(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        for key, value in {**EXPERIMENT_KIND, **runs_view_tag()}.items():
            if found.tags.get(key) is None:  # a view the user changed and saved stays theirs
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    location = None
    if artifact_location:
        path = Path(artifact_location)
        path.mkdir(parents=True, exist_ok=True)
        location = path.resolve().as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location, tags={**EXPERIMENT_KIND,
                                                                                     **runs_view_tag()})
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(experiment).experiment_id


class Tracker:
    """One MLflow run: parameters, metrics by step, tags and artifacts.

    Survives a store that goes away for a while (:mod:`ess_reg.harness.outages`): the writes of
    a run's start and end wait for it, up to ``retry_seconds``; metrics and figures logged while
    training are kept aside in order, in memory and in ``spool`` (a JSON-lines file beside the
    checkpoint, so a killed process loses none), and written first when the store answers again.
    Past ``retry_seconds`` without an answer, :class:`StoreUnavailable` is raised."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 run_name: str | None = None, run_id: str | None = None, parent_run_id: str | None = None,
                 retry_seconds: float = RETRY_SECONDS):
        self._setup(uri, retry_seconds)
        # first: opening the store creates it, under its lock (concurrent first use)
        self.experiment_id = self._call("opening the experiment",
                                        lambda: experiment_id(uri, experiment, artifact_location))
        self.client = MlflowClient(uri)
        if run_id is None:
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            run = self._call("creating the run",
                             lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags))
            run_id = run.info.run_id
        else:
            self._call("reopening the run", lambda: self.client.update_run(run_id, status="RUNNING"))
            run = self._call("reading the run", lambda: self.client.get_run(run_id))
        self.run_id, self.run_name = run_id, run.info.run_name  # a resumed run keeps the name it was given
        self._last_step = self._call("reading the logged steps", self._logged_steps)

    @classmethod
    def attach(cls, uri: str, run_id: str, retry_seconds: float = RETRY_SECONDS) -> "Tracker":
        """Log into an existing run without touching its status (a sweep's summary)."""
        self = cls.__new__(cls)
        self._setup(uri, retry_seconds)
        self.client, self.run_id = MlflowClient(uri), run_id
        self.experiment_id = self._call("reading the run", lambda: self.client.get_run(run_id)).info.experiment_id
        self._last_step = self._call("reading the logged steps", self._logged_steps)
        return self

    def _setup(self, uri: str, retry_seconds: float) -> None:
        if uri.startswith(("http://", "https://")):
            # MLflow would retry each request on its own for minutes (and not at all on a cut
            # answer), holding training up; the waiting is done here, where what waits is chosen.
            # A user's own setting is kept.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri, self.retry_seconds = uri, float(retry_seconds)
        self.spool: Path | None = None  # where writes kept aside are mirrored on disk
        self._pending: list[dict] = []  # writes kept aside while the store is away, oldest first
        self._away_since: float | None = None
        self._error: BaseException | None = None
        self._backoff, self._next_try = Backoff(), 0.0

    # ---- every call to the store goes through one of these two ----------------------------

    def _call(self, what: str, call):
        """A write (or read) that must happen now: what waits goes first, then ``call``, each
        retried while the store is away, up to ``retry_seconds``."""
        if self._pending:
            retrying(self._flush, uri=self.uri, window=self.retry_seconds, what="logging what was kept aside")
        return retrying(call, uri=self.uri, window=self.retry_seconds, what=what)

    def _write_or_keep(self, record: dict) -> None:
        """A metric or figure: written if the store answers, else kept aside (in order) and
        training goes on; :class:`StoreUnavailable` once the store has been away too long."""
        if self._pending and time.monotonic() >= self._next_try:
            try:
                self._flush()
            except Exception as err:
                if not transient(err):
                    raise
                self._error, self._next_try = err, time.monotonic() + self._backoff.wait()
        if not self._pending:
            try:
                self._apply(record)
                return
            except Exception as err:
                if not transient(err):
                    raise
                self._error, self._away_since = err, time.monotonic()
                self._next_try = self._away_since + self._backoff.wait()
                log.warning("ess-train: the tracking store at %s did not answer (%s); training goes on, metrics are "
                            "kept aside%s and logged when it answers (for up to %.0f s)", self.uri,
                            type(err).__name__, f" in {self.spool}" if self.spool else "", self.retry_seconds)
        self._keep(record)
        away = time.monotonic() - self._away_since
        if away > self.retry_seconds:
            raise StoreUnavailable(self.uri, away, self._error)

    def _apply(self, record: dict) -> None:
        if record["kind"] == "metrics":
            self.client.log_batch(self.run_id,
                                  metrics=[mlflow.entities.Metric(k, v, record["timestamp"], record["step"])
                                           for k, v in record["metrics"].items()])
        else:
            import io

            from PIL import Image

            png = record["png"] if "png" in record else Path(record["file"]).read_bytes()
            with Image.open(io.BytesIO(png)) as image:
                self.client.log_image(self.run_id, image.convert("RGB"), key=record["key"], step=record["step"])

    def _flush(self) -> None:
        while self._pending:
            self._apply(self._pending[0])
            self._pending.pop(0)
        if self._away_since is not None:
            log.warning("ess-train: the tracking store at %s answers again after %.0f s; what was kept aside is logged",
                        self.uri, time.monotonic() - self._away_since)
        self._away_since, self._next_try = None, 0.0
        self._backoff.reset()
        self._clear_spool()

    def _keep(self, record: dict) -> None:
        self._pending.append(record)
        if self.spool is None:
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        line = dict(record)
        if "png" in line:  # a figure: its own file beside the spool
            image = self.spool.with_name(f"{self.spool.stem}-{line['key']}-{line['step']}-{uuid.uuid4().hex[:8]}.png")
            image.write_bytes(line.pop("png"))
            line["file"] = str(image)
        with open(self.spool, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _clear_spool(self) -> None:
        if self.spool is None:
            return
        for path in [self.spool, *self.spool.parent.glob(f"{self.spool.stem}-*.png")]:
            path.unlink(missing_ok=True)

    def replay_spool(self) -> int:
        """Log what an earlier process of this run kept aside and could not log (its spool),
        oldest first; steps already in the store are not logged twice. Returns how many writes.

        The spool is moved aside first (``*.replay.jsonl``) and removed only once every record
        was logged or kept aside anew, so neither a store that goes away during the replay nor a
        kill in the middle of it loses a record."""
        if self.spool is None:
            return 0
        replay = self.spool.with_name(f"{self.spool.stem}.replay.jsonl")
        if self.spool.is_file():
            if replay.is_file():  # a replay that was cut short: its records come first
                with open(replay, "a") as f:
                    f.write(self.spool.read_text())
                self.spool.unlink()
            else:
                self.spool.replace(replay)
        if not replay.is_file():
            return 0
        records, images = [], []
        for number, line in enumerate(replay.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a process killed mid-write
                log.warning("ess-train: %s line %d is not a whole record; skipped", replay, number)
                continue
            if record.get("kind") == "image":
                image = Path(record.pop("file", ""))
                if not image.is_file():
                    continue
                record["png"] = image.read_bytes()
                images.append(image)
            records.append(record)
        for record in records:
            if record["kind"] == "metrics":
                self.log_metrics(record["metrics"], record["step"], timestamp=record["timestamp"])
            else:
                self._write_or_keep(record)
        replay.unlink()
        for image in images:
            image.unlink(missing_ok=True)
        log.info("ess-train: logged %d writes that an earlier process of run %s kept aside", len(records), self.run_id)
        return len(records)

    def give_up(self, reason: str) -> bool:
        """After :class:`StoreUnavailable`: one try, without waiting, to mark the run KILLED
        with ``reason``; False when the store still does not answer (the status then stays as
        it was, and the spool keeps what was not logged)."""
        try:
            self.client.set_tag(self.run_id, "failure_reason", reason[:8000])
            self.client.set_terminated(self.run_id, status="KILLED")
            return True
        except Exception as err:
            if transient(err):
                return False
            raise

    @property
    def kept_aside(self) -> int:
        return len(self._pending)

    # ---- the interface --------------------------------------------------------------------

    def _logged_steps(self) -> dict[str, int]:
        """The last step already logged for each metric: a resumed run never logs a step twice."""
        run = self.client.get_run(self.run_id)
        last = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            last[key] = max(m.step for m in history) if history else -1
        return last

    def log_params(self, params: Mapping[str, Any]) -> None:
        existing = self._call("reading the params", lambda: self.client.get_run(self.run_id).data.params)
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        for start in range(0, len(fresh), 100):
            batch = dict(list(fresh.items())[start : start + 100])
            self._call("logging params", lambda b=batch: self.client.log_batch(
                self.run_id, params=[mlflow.entities.Param(k, v) for k, v in b.items()]))

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: int | None = None) -> None:
        fresh = {k: float(v) for k, v in metrics.items() if step > self._last_step.get(k, -1)}
        if not fresh:
            return
        self._last_step.update({k: step for k in fresh})  # kept aside counts as logged: never twice
        self._write_or_keep({"kind": "metrics", "step": int(step), "metrics": fresh,
                             "timestamp": timestamp or int(time.time() * 1000)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._call(f"setting tag {key}", lambda k=key, v=value: self.client.set_tag(self.run_id, k, str(v)[:8000]))

    def delete_tags(self, *keys: str) -> None:
        """Remove tags if present (a resumed run that finishes drops its old failure reason)."""
        present = self._call("reading the tags", lambda: self.client.get_run(self.run_id).data.tags)
        for key in keys:
            if key in present:
                self._call(f"deleting tag {key}", lambda k=key: self.client.delete_tag(self.run_id, k))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._call(f"uploading {Path(path).name}",
                   lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_json(self, data: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(data, indent=2))
            self.log_artifact(path)

    def log_figure(self, figure, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            figure.savefig(path, dpi=100, bbox_inches="tight")
            self.log_artifact(path)

    def log_image(self, figure, key: str, step: int) -> None:
        """A figure as an image of ``step`` under ``key``: the MLflow UI steps through them."""
        import io

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        self._write_or_keep({"kind": "image", "key": key, "step": int(step), "png": buffer.getvalue()})

    def finish(self, status: str = "FINISHED") -> None:
        self._call(f"closing the run as {status}", lambda: self.client.set_terminated(self.run_id, status=status))


def start_parent_run(uri: str, experiment: str, artifact_location: str | None, run_name: str) -> str:
    """A parent run for a multirun sweep; returns its id."""
    tracker = Tracker(uri, experiment, artifact_location, run_name=run_name)
    return tracker.run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(uri).set_terminated(run_id, status=status)


def get_run(uri: str, run_id: str):
    """The run ``run_id`` in the store at ``uri``, or ``None`` if there is none (a missing SQLite
    file is not created by asking)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    try:
        return MlflowClient(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def download_artifact(uri: str, run_id: str, path: str, destination: str | os.PathLike) -> Path | None:
    """Download one artifact of a run; ``None`` if the run has no such artifact."""
    try:
        return Path(MlflowClient(uri).download_artifacts(run_id, path, str(destination)))
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def resolve_run_id(uri: str, prefix: str) -> str | None:
    """The full id of the one run in the store whose id starts with ``prefix`` (at least 6 hex
    characters, as the UI and the terminal show them shortened); None when no run matches;
    ValueError naming the candidates when several do."""
    import re

    if not re.fullmatch(r"[0-9a-f]{6,32}", prefix):
        return None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(experiments, f"attributes.run_id LIKE '{prefix}%'", max_results=5)
    if len(found) > 1:
        raise ValueError(f"run id prefix {prefix!r} matches {len(found)} runs "
                         f"({', '.join(r.info.run_id for r in found)}): give more of it")
    return found[0].info.run_id if found else None


def child_runs(uri: str, parent_run_id: str) -> list:
    """The runs whose parent is ``parent_run_id`` (or the one run id it starts), oldest first; an
    unknown parent is a ValueError naming it."""
    client = MlflowClient(uri)
    parent = get_run(uri, parent_run_id)
    if parent is None and len(parent_run_id) < 32:
        full = resolve_run_id(uri, parent_run_id)
        parent = get_run(uri, full) if full else None
    if parent is None:
        raise ValueError(f"no run {parent_run_id!r} in the store {uri} (--parent takes a sweep parent's run id)")
    parent_run_id = parent.info.run_id
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=5000)
    return sorted(runs, key=lambda r: r.info.start_time)


def experiment_runs(uri: str, experiment: str) -> list:
    """Every run of the experiment named ``experiment``, oldest first; a missing experiment is
    an error naming the ones there are."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment {experiment!r} in {uri}; there are {names}")
    runs = client.search_runs([found.experiment_id], max_results=50000)
    return sorted(runs, key=lambda r: r.info.start_time)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of metric ``key``, by step (the last write of a
    step wins, as a resumed run may log its step again)."""
    latest = {}
    for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        latest[m.step] = m.value
    return sorted(latest.items())

