"""MLflow: where runs go, and how the train and evaluate stages share one run."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, TypeVar
from urllib.parse import urlparse

from textclf.atomic import DISK_FULL, write_json
from textclf.config import TrackingConfig, flatten
from textclf.errors import TextclfError

RUN_FILE = "mlflow_run.json"  # written by train into the models directory, read by evaluate
# The sha256 of the checkpoint a run trained: a tag of the run and a key of mlflow_run.json.
CHECKPOINT_TAG = "textclf.checkpoint_sha256"
DEFAULT_STORE = "mlflow.db"
T = TypeVar("T")


def project_root() -> Path:
    """The repository the pipeline runs in.

    ``dvc exp run --queue`` workers run stages in a temporary copy of the repository and set
    $DVC_ROOT to the parent repository, so their runs land in the same store as all others.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


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


def ensure_experiment(uri: str, name: str) -> str:
    """Returns the id of experiment ``name``, creating it; opens (and so creates) a SQLite store
    under ``store_lock`` first, so parallel jobs can share one store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with store_errors(uri), store_lock(uri):
        client = retry_if_locked(MlflowClient, tracking_uri=uri)  # creates the tables of a new store
        database = sqlite_path(uri)
        if database is not None:
            _use_wal(database)
        experiment = retry_if_locked(client.get_experiment_by_name, name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=default_artifact_location(uri))
        except MlflowException:  # created meanwhile by a process that does not take the lock
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def git_commit(root: Path | None = None) -> str | None:
    """The checked-out commit (the experiment's baseline for a queued DVC run), if any."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def git_dirty(root: Path | None = None) -> str:
    """"true" when a tracked file differs from the checked-out commit (`git status --porcelain
    --untracked-files=no`), "false" for a clean tree, "unknown" outside a git checkout.

    Untracked files do not count: the stages' own outputs (data/, models/, reports/, dvc.lock
    before its first commit, caches) are not code, and would otherwise mark every run dirty."""
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "true" if result.stdout.strip() else "false"


# MLflow tag -> distribution whose version it records.
VERSION_TAGS = {
    "version.torch": "torch",
    "version.lightning": "lightning",
    "version.torchmetrics": "torchmetrics",
    "version.mlflow": "mlflow",
    "version.hydra-core": "hydra-core",
    "version.dvc": "dvc",
    "version.numpy": "numpy",
}


def package_versions() -> dict[str, str]:
    versions = {"version.python": platform.python_version()}
    for tag, distribution in VERSION_TAGS.items():
        try:
            versions[tag] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[tag] = "not installed"
    return versions


def device_name(accelerator: str) -> str:
    """What trainer.accelerator runs on here: "cpu", "mps" or the CUDA device's name."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"cuda: {name}" + (f" (x{count})" if count > 1 else "")
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def run_tags(resolved: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str]:
    """Provenance of a training run: code version (commit, dirty tree), data version, model
    family, library versions, platform and device."""
    return {
        "mlflow.source.git.commit": git_commit(project_root()) or "unknown",
        "git_dirty": git_dirty(),
        "data_hash": manifest["data_hash"],
        "model": resolved["model"]["_target_"].rsplit(".", 1)[-1],
        **package_versions(),
        "platform": platform.platform(),
        "device": device_name(str(resolved["trainer"].get("accelerator", "cpu"))),
    }


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# Environment variables whose values are secrets; a logged value equal to one is masked.
_SECRET_ENV = re.compile(
    r"^(AWS_.*|.*_TOKEN|.*_PASSWORD|.*SECRET.*|.*_API_KEY|.*_ACCESS_KEY.*|MLFLOW_TRACKING_PASSWORD)$",
    re.IGNORECASE,
)
# Config keys (the last part of a dotted name) whose values are secrets whatever they hold.
_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|secret|token|api_?key|access_?key|secret_?key|credentials?)$",
    re.IGNORECASE,
)  # "auth_token", "password": yes; "token_pattern": no
MASK = "***"
_MIN_SECRET_IN_TEXT = 8  # shorter secret values are masked only where a value equals them


def mask_userinfo(text: str) -> str:
    """https://user:pass@host/x -> https://***@host/x (any scheme, anywhere in ``text``)."""
    return _USERINFO.sub(rf"\g<scheme>{MASK}@", text)


def _secret_values(environ: Mapping[str, str]) -> list[str]:
    values = {value for name, value in environ.items() if value and _SECRET_ENV.match(name)}
    return sorted(values, key=len, reverse=True)  # longest first, so no secret is half-masked


def _redact_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(item, secrets) for item in value)
    if not isinstance(value, str):
        return value
    if value in secrets:
        return MASK
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_IN_TEXT and secret in value:
            value = value.replace(secret, MASK)
    return mask_userinfo(value)


def redact_secrets(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``params`` (flattened config) with secrets masked, for logging to MLflow.

    Masks values of keys named like secrets (``*password*``, ``*token*``, ...), values equal
    to (or containing) the value of a secret environment variable (AWS_*, *_TOKEN,
    *_PASSWORD, *SECRET*, *_API_KEY, MLFLOW_TRACKING_PASSWORD), and URL userinfo."""
    secrets = _secret_values(os.environ if environ is None else environ)
    redacted: dict[str, Any] = {}
    for key, value in params.items():
        if value is not None and _SECRET_KEY.search(str(key).rsplit(".", 1)[-1]):
            redacted[key] = MASK
        else:
            redacted[key] = _redact_value(value, secrets)
    return redacted


def redact_config(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The nested config with the same secrets masked as ``redact_secrets`` masks in the flat
    params: for config.yaml files that travel with a checkpoint or a shipped model."""
    nested: dict[str, Any] = {}
    for key, value in redact_secrets(flatten(config), environ).items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


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
            raise TextclfError(
                f"MLflow tracking URI {shown}: directory {database.parent} does not exist"
            )
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
        raise TextclfError(
            f"MLflow tracking URI {mask_userinfo(uri)}: {reason} ({type(error).__name__})"
        ) from error


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def existing_run(uri: str, models_dir: Path) -> str | None:
    """The run id that ``models_dir``/mlflow_run.json names, if that run is in the store at
    ``uri``; None when there is no reference or the run is not there (another store)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    path = models_dir / RUN_FILE
    if not path.is_file():
        return None
    run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
    try:
        with store_errors(uri):
            retry_if_locked(MlflowClient(tracking_uri=uri).get_run, run_id)
    except MlflowException:
        return None
    return run_id


def read_run_reference(models_dir: Path) -> dict[str, str]:
    path = models_dir / RUN_FILE
    if not path.is_file():
        raise TextclfError(f"{path}: not found (run the train stage first)")
    return json.loads(path.read_text(encoding="utf-8"))
