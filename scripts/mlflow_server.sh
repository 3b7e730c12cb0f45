#!/usr/bin/env bash
# A local MLflow tracking server on PostgreSQL, both bound to 127.0.0.1 only.
#
#   scripts/mlflow_server.sh start    # first time: initdb + database; then PostgreSQL + `mlflow server`
#   scripts/mlflow_server.sh status
#   scripts/mlflow_server.sh stop
#   (or `make mlflow-server` / `make mlflow-server-stop`)
#
# `start` prints the tracking URI and writes it to $MLFLOW_SERVER_DIR/uri; point the pipeline
# at it with `export MLFLOW_TRACKING_URI=$(cat .mlflow-server/uri)`.
#
# Environment:
#   MLFLOW_SERVER_DIR  state directory (default .mlflow-server): postgres/ (cluster, log),
#                      artifacts/ (served by mlflow as mlflow-artifacts:/), pgpass, logs, pids
#   MLFLOW_PORT        port of the tracking server (default: a free port)
#   PG_PORT            port of PostgreSQL (default: a free port)
#   PG_USER            when run as root: the user that runs PostgreSQL, which refuses to run as
#                      root (default postgres; created with useradd if missing)
#   PYTHON             the interpreter with mlflow and psycopg2 (default: python on PATH)
#   START_TIMEOUT      seconds to wait for each server to answer (default 120)
#
# PostgreSQL comes from Debian's `postgresql` package; when its binaries are missing and this
# runs as root, they are installed with apt-get. The database user `mlflow` has a random
# password kept in $MLFLOW_SERVER_DIR/pgpass (mode 600, read by libpq through PGPASSFILE), so
# it never shows up in a command line or in the tracking URI.
set -euo pipefail

DIR=$(mkdir -p "${MLFLOW_SERVER_DIR:-.mlflow-server}" && cd "${MLFLOW_SERVER_DIR:-.mlflow-server}" && pwd)
PYTHON=${PYTHON:-python}
START_TIMEOUT=${START_TIMEOUT:-120}
PG_DIR=$DIR/postgres
PG_DATA=$PG_DIR/data
DB_NAME=mlflow
DB_USER=mlflow
export PGPASSFILE=$DIR/pgpass

die() { echo "mlflow_server: $*" >&2; exit 1; }

pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $dir && -x $dir/pg_ctl && -x $dir/initdb ]]; then echo "$dir"; return; fi
    if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then dirname "$(command -v pg_ctl)"; return; fi
    return 1
}

ensure_postgres() {
    if ! PG_BIN=$(pg_bindir); then
        if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
            die "PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql package"
        fi
        echo "mlflow_server: installing postgresql with apt-get" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        PG_BIN=$(pg_bindir) || die "postgresql installed, but initdb/pg_ctl are still missing"
    fi
}

# PostgreSQL refuses to run as root: as root, its server commands run as $PG_USER.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

ensure_pg_user() {
    PG_USER=${PG_USER:-postgres}
    [[ $(id -u) -eq 0 ]] || { PG_USER=$(id -un); return; }
    id -u "$PG_USER" >/dev/null 2>&1 \
        || useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

init_cluster() {
    mkdir -p "$PG_DIR"
    chmod 700 "$PG_DIR"
    if [[ $(id -u) -eq 0 ]]; then chown "$PG_USER" "$PG_DIR"; fi
    as_pg test -w "$PG_DIR" \
        || die "$PG_DIR is not reachable by user $PG_USER (is a parent directory private?); set MLFLOW_SERVER_DIR elsewhere"
    [[ -f $PG_DATA/PG_VERSION ]] && return
    local password
    password=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
    (umask 077 && echo "127.0.0.1:*:*:$DB_USER:$password" > "$PGPASSFILE")
    (umask 077 && echo "$password" > "$PG_DIR/pwfile")
    if [[ $(id -u) -eq 0 ]]; then chown "$PG_USER" "$PG_DIR/pwfile"; fi
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$DB_USER" --pwfile="$PG_DIR/pwfile" \
        --auth=scram-sha-256 --encoding=UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
        || { rm -f "$PG_DIR/pwfile"; die "initdb failed: $(tail -n 5 "$PG_DIR/initdb.log")"; }
    rm -f "$PG_DIR/pwfile"
}

start_postgres() {
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        PG_PORT=$(sed -n 4p "$PG_DATA/postmaster.pid")
        return
    fi
    PG_PORT=${PG_PORT:-$(free_port)}
    # TCP on 127.0.0.1 only; the Unix socket lives in the cluster's own directory.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DIR/postgres.log" -w -t "$START_TIMEOUT" \
        -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR" start >/dev/null \
        || die "PostgreSQL did not start: $(tail -n 5 "$PG_DIR/postgres.log")"
    if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
        "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB_NAME"
    fi
}

start_mlflow() {
    if pid_alive "$DIR/mlflow.pid"; then
        echo "mlflow_server: already running ($(cat "$DIR/uri"))" >&2
        return
    fi
    MLFLOW_PORT=${MLFLOW_PORT:-$(free_port)}
    mkdir -p "$DIR/artifacts"
    # A session of its own, so `stop` ends the server and its workers (one process group).
    # MLflow's background job workers (eight huey processes, for GenAI evaluation jobs) are
    # off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true: tracking runs does not use them.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
    setsid "$PYTHON" -m mlflow server \
        --backend-store-uri "postgresql+psycopg2://$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME" \
        --artifacts-destination "$DIR/artifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        >"$DIR/mlflow.log" 2>&1 < /dev/null &
    echo $! > "$DIR/mlflow.pid"
    local uri=http://127.0.0.1:$MLFLOW_PORT deadline=$((SECONDS + START_TIMEOUT))
    until "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' "$uri" 2>/dev/null; do
        if ! pid_alive "$DIR/mlflow.pid" || (( SECONDS > deadline )); then
            tail -n 20 "$DIR/mlflow.log" >&2
            stop
            die "mlflow server did not answer at $uri within ${START_TIMEOUT}s (log: $DIR/mlflow.log)"
        fi
        sleep 1
    done
    echo "$uri" > "$DIR/uri"
}

stop() {
    if pid_alive "$DIR/mlflow.pid"; then
        local pid
        pid=$(cat "$DIR/mlflow.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/mlflow.pid" "$DIR/uri"
    if [[ -n ${PG_BIN:-} && -f $PG_DATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$START_TIMEOUT" stop >/dev/null
    fi
}

case ${1:-start} in
    start)
        ensure_postgres
        ensure_pg_user
        init_cluster
        start_postgres
        start_mlflow
        cat "$DIR/uri"
        ;;
    stop)
        PG_BIN=$(pg_bindir) || PG_BIN=
        ensure_pg_user
        stop
        ;;
    status)
        if pid_alive "$DIR/mlflow.pid"; then echo "running: $(cat "$DIR/uri")"; else echo "stopped"; exit 3; fi
        ;;
    *)
        die "usage: $0 [start|stop|status]"
        ;;
esac
