#!/usr/bin/env bash
# fieldlink's full test run: the command the README gives and CI runs.
#
#   deploy/local/test.sh [PYTEST_ARGS...]
#
# 1. deploy/local/setup.sh (system packages, .venv, pip install -e '.[dev]'; quick when done);
# 2. starts Kafka, InfluxDB, PostgreSQL and Mosquitto on 127.0.0.1 and prints which ran;
# 3. ruff check . and mypy (packages from pyproject.toml);
# 4. pytest tests/unit tests/integration PYTEST_ARGS (if the first argument is a path, only
#    PYTEST_ARGS: `deploy/local/test.sh tests/integration -x`);
# 5. stops the services, also on failure or Ctrl-C (FIELDLINK_KEEP_SERVICES=1 keeps them).
#
# Exit status: pytest's, except that "no tests collected" (5) is a failure too; a ruff or mypy
# failure makes it non-zero even when pytest passed. Nothing is skipped silently: under CI=true
# an integration test whose service is missing fails.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
SERVICES="$ROOT/deploy/local/services/all.sh"
T0=$SECONDS

banner() { printf '\n======== %s (%ss) ========\n' "$*" "$((SECONDS - T0))"; }

stop_services() {
    local rc=$?
    if [[ ${FIELDLINK_KEEP_SERVICES:-0} == 1 ]]; then
        banner "services left running (FIELDLINK_KEEP_SERVICES=1)"
    else
        banner "stopping services"
        bash "$SERVICES" stop || true
    fi
    banner "done, exit $rc"
    exit "$rc"
}
# Signals become a normal exit so the EXIT trap (and so the service stop) always runs.
trap 'exit 130' INT
trap 'exit 143' TERM
trap stop_services EXIT

banner "setup"
bash "$ROOT/deploy/local/setup.sh" || exit 1
PY="$ROOT/.venv/bin"

banner "starting services"
if ! bash "$SERVICES" start; then
    echo "test.sh: a service failed to start (its log is named above); not running tests" >&2
    exit 1
fi
banner "services"
bash "$SERVICES" status || exit 1

banner "ruff check ."
ruff_rc=0
"$PY/ruff" check . || ruff_rc=$?

banner "mypy"
mypy_rc=0
"$PY/mypy" || mypy_rc=$?

if [[ $# -gt 0 && -e ${1%%::*} ]]; then
    pytest_args=("$@")
else
    pytest_args=(tests/unit tests/integration "$@")
fi
banner "pytest ${pytest_args[*]}"
pytest_rc=0
# The services are up and this script stops them; pytest must not stop them on its own.
FIELDLINK_KEEP_SERVICES=1 "$PY/pytest" "${pytest_args[@]}" || pytest_rc=$?
if ((pytest_rc == 5)); then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
fi

banner "summary: ruff=$ruff_rc mypy=$mypy_rc pytest=$pytest_rc"
if ((pytest_rc != 0)); then
    exit "$pytest_rc"
elif ((ruff_rc != 0 || mypy_rc != 0)); then
    exit 1
fi
exit 0
