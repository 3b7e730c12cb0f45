"""MLflow: where runs go, the one client the project reaches a store with, and how the train
and evaluate stages share one run.

Provenance (git, versions, device) is in textclf.provenance, secret masking in textclf.redact.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from textclf.atomic import DISK_FULL, write_json
from textclf.config import TrackingConfig
from textclf.errors import TextclfError
from textclf.outputs import RUN_FILE
from textclf.provenance import project_root
from textclf.redact import mask_userinfo

if TYPE_CHECKING:
    from mlflow import MlflowClient

# The sha256 of the checkpoint a run trained: a tag of the run and a key of mlflow_run.json.
CHECKPOINT_TAG = "textclf.checkpoint_sha256"
# MLflow 3's UI opens an experiment on the page its kind names; without this tag it guesses,
# and opens a training experiment on its (empty) GenAI traces page.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
DEFAULT_STORE = "mlflow.db"
T = TypeVar("T")


def tracking_uri(cfg: TrackingConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///<repository root>/mlflow.db."""
    if cfg.uri is not None:
        return cfg.uri
    return default_tracking_uri()


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else sqlite:///<repository root>/mlflow.db (for tools that take
    no config, such as `python -m textclf.predict`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_STORE}"


@contextmanager
def mlflow_tracking_uri(uri: str) -> Iterator[None]:
    """Points MLflow's process-wide tracking URI at ``uri`` for the block, for the MLflow calls
    that take no URI (logging, loading and registering models), then puts back both the
    setting and $MLFLOW_TRACKING_URI as they were (MLflow's own reset would clear the variable)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils  # the explicitly set URI has no public getter

    explicit, environ = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(explicit)  # None: unset, which also drops the variable
        if environ is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environ


def default_artifact_location(uri: str) -> str | None:
    """For the embedded SQLite store, artifacts go beside it (not into the current directory,
    which for a queued DVC experiment is a temporary copy that is deleted afterwards)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores."""
    if not uri.startswith("sqlite:///") or uri.removeprefix("sqlite:///") in ("", ":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def require_store(uri: str, write: bool = False) -> str:
    """``uri``, once a SQLite store is known to exist: tools that only read runs (predict,
    compare) must not leave an empty database behind a mistyped path, as MLflow would. Then
    ``check_tracking_uri``: readable (and writable, with ``write``) and reachable."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise TextclfError(f"no MLflow store at {path} (train a model first, or set MLFLOW_TRACKING_URI)")
    check_tracking_uri(uri, write=write)
    return uri


STORE_LOCK_TIMEOUT_SECONDS = 300.0


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serializes, across processes, the first use of a SQLite store and experiment creation.

    MLflow creates and migrates the tables of a new SQLite store when a client first opens it,
    without any lock: two parallel jobs (joblib launcher, `dvc queue start -j 2`, DDP ranks)
    opening a fresh store both migrate it and one of them crashes. The lock file sits beside
    the database (``mlflow.db-lock``). Other stores (servers, PostgreSQL) need no lock."""
    from filelock import FileLock

    path = sqlite_path(uri)
    if path is None:
        yield
        return
    with FileLock(f"{path}-lock", timeout=STORE_LOCK_TIMEOUT_SECONDS):
        yield


LOCKED_RETRIES = 8  # waits 0.25 s, 0.5 s, ... 32 s: about a minute in all


def retry_if_locked(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried with exponential backoff while SQLite says "database
    is locked". MLflow already waits up to 20 s for a lock (busy_timeout), but SQLite returns
    "locked" at once when waiting could deadlock, and a loaded machine can exceed the wait.
    A failed write is rolled back, so repeating it cannot log anything twice."""
    for attempt in range(LOCKED_RETRIES + 1):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException, sqlalchemy's or sqlite3's OperationalError
            if "database is locked" not in str(error) or attempt == LOCKED_RETRIES:
                raise
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


def _use_wal(database: Path) -> None:
    """Write-ahead logging: readers (the MLflow UI, a search) no longer block the writer and
    parallel jobs wait less for each other. The mode is stored in the database file."""
    import sqlite3

    with closing(sqlite3.connect(database, timeout=60)) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


class TrackingStore:
    """The MLflow tracking store at ``uri``, reached through one MlflowClient.

    Every method of the client is a method of the store (``store.get_run(run_id)``,
    ``store.log_batch(run_id, metrics=...)``, ``store.search_runs(...)``, ...), retried while
    SQLite says "database is locked" (``retry_if_locked``), with a failure of the store itself
    (corrupt, read-only, unreachable) raised as one TextclfError naming ``uri``
    (``store_errors``). ``call`` does the same for MLflow functions that are no client method.
    The client is made on first use; ``ensure_experiment`` makes it under the store lock."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = self.call(MlflowClient, tracking_uri=self.uri)  # may create a new store's tables
        return self._client

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with store_errors(self.uri):
            return retry_if_locked(function, *args, **kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):  # not a client method (and no recursion before __init__ ran)
            raise AttributeError(name)
        method = getattr(self.client, name)

        @functools.wraps(method)
        def retried(*args: Any, **kwargs: Any) -> Any:
            return self.call(method, *args, **kwargs)

        return retried

    def ensure_experiment(self, name: str) -> str:
        """Returns the id of experiment ``name``, creating it, marked as a model-training
        experiment (EXPERIMENT_KIND_TAG; an existing one lacking the mark gets it). Opens (and
        so creates) a SQLite store under ``store_lock`` first, so parallel jobs can share one."""
        from mlflow.exceptions import MlflowException

        with store_errors(self.uri), store_lock(self.uri):
            self.client  # noqa: B018 - creates the tables of a new store, under the lock
            database = sqlite_path(self.uri)
            if database is not None:
                _use_wal(database)
            experiment = self.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return self.create_experiment(
                        name,
                        artifact_location=default_artifact_location(self.uri),
                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING},
                    )
                except MlflowException:  # created meanwhile by a process that does not take the lock
                    experiment = self.get_experiment_by_name(name)
                    if experiment is None:
                        raise
            if EXPERIMENT_KIND_TAG not in experiment.tags:
                self.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            return experiment.experiment_id


def ensure_experiment(uri: str, name: str) -> str:
    """``TrackingStore(uri).ensure_experiment(name)``."""
    return TrackingStore(uri).ensure_experiment(name)


REACH_TIMEOUT_SECONDS = 5.0


def check_tracking_uri(uri: str, timeout: float = REACH_TIMEOUT_SECONDS, write: bool = True) -> None:
    """Fails fast, in one line naming ``uri``, when the tracking store cannot be reached.

    http(s): a TCP connection to the server within ``timeout`` (MLflow itself retries an
    unreachable server for minutes); sqlite: the database's directory exists, an existing
    database file is an SQLite database, and (``write``) the file and its directory (journal,
    lock file) are writable; file or plain path: its nearest existing directory is writable.
    Readers (compare, predict) pass ``write=False``. Other schemes (databricks, ...) are left
    to MLflow."""
    shown = mask_userinfo(uri)
    hint = "start the server or set tracking.uri / MLFLOW_TRACKING_URI"
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError as error:
            raise TextclfError(f"MLflow tracking URI {shown}: bad port ({error})") from error
        if not parsed.hostname:
            raise TextclfError(f"MLflow tracking URI {shown}: no host")
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as error:
            reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            raise TextclfError(f"MLflow tracking URI {shown} is unreachable ({reason}); {hint}") from error
        return
    if parsed.scheme == "sqlite":
        location = uri.removeprefix("sqlite:///")
        if location in ("", ":memory:") or uri.startswith("sqlite://:memory:"):
            return
        database = Path(location)
        if not database.parent.is_dir():
            raise TextclfError(f"MLflow tracking URI {shown}: directory {database.parent} does not exist")
        if database.exists():
            _check_sqlite_database(database, shown)
        if write:
            # access() answers for a read-only mount even as root (EROFS), where chmod does not bind.
            for writable in (database, database.parent) if database.exists() else (database.parent,):
                if not os.access(writable, os.W_OK):
                    raise TextclfError(
                        f"MLflow tracking URI {shown}: {writable} is read-only (runs are written there; "
                        "make it writable, or set tracking.uri / MLFLOW_TRACKING_URI)"
                    )
        return
    if not write:
        return
    if parsed.scheme in ("file", "") or (len(parsed.scheme) == 1 and sys.platform == "win32"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser().absolute()
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise TextclfError(f"MLflow tracking URI {shown}: {existing or path} is not a writable directory")


def _check_sqlite_database(database: Path, shown: str) -> None:
    """``database`` opens, read-only, as an SQLite database and its schema can be read (the
    first page: random bytes, another file type or a truncated header fail here, in
    milliseconds, rather than as SQLAlchemy's 85-line traceback)."""
    import sqlite3

    if not database.is_file():
        raise TextclfError(f"MLflow tracking URI {shown}: {database} is not a file")
    try:
        with closing(sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True, timeout=20)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        if "locked" in str(error):  # a writer holds it: it is a database
            return
        raise TextclfError(
            f"MLflow tracking URI {shown}: {database} cannot be read as an SQLite database ({error}); "
            "move it aside (a new store is created in its place) or set tracking.uri / MLFLOW_TRACKING_URI"
        ) from error


# Failures of the store itself, as SQLite, SQLAlchemy or MLflow's REST client word them -> what
# the one line says. Anything else (a bug, a missing run) keeps its own error.
STORE_FAILURES = (
    ("file is not a database", "not an SQLite database"),
    ("database disk image is malformed", "the SQLite database is corrupt"),
    ("readonly database", "the database is read-only"),
    ("unable to open database file", "the database file cannot be opened"),
    ("database or disk is full", "the disk holding the database is full"),
    ("disk i/o error", "disk I/O error"),
    ("max retries exceeded", "the server is unreachable"),
    ("connection refused", "the server is unreachable"),
)


def store_failure(error: BaseException) -> str | None:
    """What is wrong with the store, if ``error`` (or an error it was raised from) says so."""
    for current in _chain(error):
        text = str(current).lower()
        for phrase, reason in STORE_FAILURES:
            if phrase in text:
                return reason
    return None


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """A failure of the tracking store inside the block (a database turned read-only or
    corrupt, a server gone) becomes one TextclfError naming ``uri``."""
    try:
        yield
    except TextclfError:
        raise
    except Exception as error:
        reason = store_failure(error)
        if reason is None:
            raise
        raise TextclfError(f"MLflow tracking URI {mask_userinfo(uri)}: {reason} ({type(error).__name__})") from error


@contextmanager
def artifact_store_errors(location: str) -> Iterator[None]:
    """A full disk (or quota) under a run's artifact store ``location`` becomes one
    TextclfError naming the store, not the output directory being staged around the call."""
    try:
        yield
    except Exception as error:
        cause = next((e for e in _chain(error) if isinstance(e, OSError) and e.errno in DISK_FULL), None)
        if cause is None:
            raise
        raise TextclfError(
            f"cannot write to the MLflow artifact store {mask_userinfo(location)}: {os.strerror(cause.errno)} "
            "(free space there and rerun)"
        ) from error


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def write_run_reference(
    models_dir: Path, run_id: str, experiment_id: str, checkpoint_sha256: str, uri: str | None = None
) -> None:
    """``mlflow_run.json``: the run, the checkpoint it trained (evaluate scores only that one) and
    (``uri``, masked) the store it is in, so evaluate can tell a store that vanished from one it
    never saw."""
    reference = {"run_id": run_id, "experiment_id": experiment_id, "checkpoint_sha256": checkpoint_sha256}
    if uri is not None:
        reference["tracking_uri"] = mask_userinfo(uri)
    write_json(models_dir / RUN_FILE, reference)


def check_run_store(uri: str, reference: Mapping[str, str]) -> None:
    """Refuses to evaluate into a SQLite store that train logged to and that is gone (deleted
    or moved after training): MLflow would silently create an empty one in its place."""
    database = sqlite_path(uri)
    if database is None or database.exists() or reference.get("tracking_uri") != mask_userinfo(uri):
        return
    raise TextclfError(
        f"the MLflow store {database} that train logged run {reference['run_id']} to no longer exists "
        "(restore it, or train again: `dvc repro -f train`)"
    )


def read_run_reference(models_dir: Path) -> dict[str, str]:
    path = models_dir / RUN_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: not found (run the train stage first)")
    return json.loads(path.read_text(encoding="utf-8"))
