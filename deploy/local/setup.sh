#!/usr/bin/env bash
# Prepares a Debian 12 (bookworm) machine to build and test fieldlink. Idempotent: every step
# checks first and does nothing when already done, so running it again takes seconds.
#
#   deploy/local/setup.sh
#
# Steps:
#   1. system packages (apt-get, only those missing; `apt-get update` only when something is);
#   2. the virtualenv at .venv (reused if healthy; a python >= 3.11 from PATH);
#   3. `pip install -e '.[dev]'`, skipped while pyproject.toml is unchanged (stamp in .venv/).
#
# Runs as root, or as a user with sudo for step 1. Environment:
#   FIELDLINK_PYTHON=/path/to/python3   interpreter for a new .venv
#   FIELDLINK_SETUP_SKIP_APT=1          skip step 1 (e.g. no root and everything present)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.fieldlink-install.sha256"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf 'setup.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

# Where upstream installers put tools that a non-login shell may not have on PATH.
PATH="$PATH:/usr/local/go/bin:/usr/sbin"

SUDO=()
if ((EUID != 0)); then
    SUDO=(sudo -n)
fi

# ---------------------------------------------------------------------------------------------
step "[1/3] System packages"

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

java_major() {
    command -v java >/dev/null || return 0
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1
}

want=(python3 python3-venv git curl ca-certificates xz-utils
    mosquitto mosquitto-clients mtools dosfstools fdisk
    # provisioning tests: cloud-init's schema check, shell lint of firstrun.sh, unit checks
    cloud-init shellcheck systemd
    # dashboard and click-snippet tests drive a real headless browser
    chromium)
# Tools that may come from elsewhere (a JDK tarball, /usr/local/go, a PGDG build): installed
# from Debian only when no usable one is found.
jv=$(java_major)
if ((${jv:-0} < 17)); then want+=(openjdk-17-jre-headless); fi
command -v mvn >/dev/null || want+=(maven)
command -v go >/dev/null || want+=(golang-go)
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then want+=(postgresql); fi

missing=()
if [[ ${FIELDLINK_SETUP_SKIP_APT:-0} == 1 ]]; then
    info "skipped (FIELDLINK_SETUP_SKIP_APT=1)"
elif ! command -v dpkg-query >/dev/null; then
    info "not a Debian system (no dpkg); install by hand: ${want[*]}"
else
    for p in "${want[@]}"; do
        have_pkg "$p" || missing+=("$p")
    done
fi

apt_install() {
    local -a cmd=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    if ((${#SUDO[@]})) && ! command -v sudo >/dev/null; then
        die "not root and no sudo: cannot install $*"
    fi
    # Package lists are stale or absent on a fresh machine: refresh once, then install.
    "${cmd[@]}" update -q || die "apt-get update failed"
    # A package's maintainer scripts must not start system daemons (postgresql, mosquitto on
    # their default ports): the tests run their own instances. policy-rc.d is the Debian way
    # to say so; leave an existing one alone.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    "${cmd[@]}" install -y -q --no-install-recommends "$@" || rc=$?
    if ((added_policy)); then "${SUDO[@]}" rm -f "$policy"; fi
    ((rc == 0)) || die "apt-get install failed for: $*"
}

if ((${#missing[@]})); then
    info "installing: ${missing[*]}"
    apt_install "${missing[@]}"
else
    info "all present"
fi
info "java: $(java -version 2>&1 | head -n1)"
info "mvn:  $(mvn -v 2>/dev/null | head -n1 | sed 's/\x1b\[[0-9;]*m//g')"
info "go:   $(go version 2>/dev/null || echo missing)"
info "postgres: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')"
info "mosquitto: $(PATH="$PATH:/usr/sbin" command -v mosquitto || echo missing)"

# ---------------------------------------------------------------------------------------------
step "[2/3] Python virtualenv ($VENV)"

py_ok() {
    # >= 3.11 and able to make a venv with pip (Debian splits that into python3-venv).
    "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        >/dev/null 2>&1
}

pick_python() {
    local c
    for c in ${FIELDLINK_PYTHON:-} python3 python3.11 python3.12 python3.13; do
        if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys, pip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    info "reusing $($VENV/bin/python --version)"
else
    if [[ -e $VENV ]]; then
        info "existing .venv is broken or too old; recreating it"
        rm -rf "$VENV"
    fi
    PY=$(pick_python) || die "no python >= 3.11 with venv/ensurepip on PATH (apt: python3 python3-venv)"
    info "creating with $PY ($("$PY" --version))"
    "$PY" -m venv "$VENV"
fi

# ---------------------------------------------------------------------------------------------
step "[3/3] pip install -e '.[dev]'"

# The stamp covers what decides the install: the dependency list and the interpreter.
want_stamp=$( (
    cat "$ROOT/pyproject.toml"
    "$VENV/bin/python" -c 'import sys; print(sys.version)'
) | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want_stamp" ]] &&
    "$VENV/bin/python" -c 'import edge' 2>/dev/null; then
    info "up to date (pyproject.toml unchanged since the last install)"
else
    rm -f "$STAMP"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    PIP_LOG="$VENV/.fieldlink-pip.log"
    # setuptools' build chatter goes to a log; a failure shows its tail.
    pip_install() {
        if ! (cd "$ROOT" && "$VENV/bin/python" -m pip install -q -e '.[dev]') >"$PIP_LOG" 2>&1; then
            tail -n 30 "$PIP_LOG" | sed 's/^/    | /' >&2
            info "pip failed; full log: $PIP_LOG"
            return 1
        fi
    }
    if ! pip_install; then
        # Every dependency ships wheels for CPython 3.11+ on amd64/arm64; a compiler is only
        # needed on an unusual platform, so it is installed only when a build actually failed.
        if [[ ${FIELDLINK_SETUP_SKIP_APT:-0} != 1 ]] && command -v dpkg-query >/dev/null &&
            ! { have_pkg build-essential && have_pkg python3-dev; }; then
            info "pip failed; installing build-essential python3-dev for source builds and retrying"
            apt_install build-essential python3-dev
            pip_install || die "pip install -e '.[dev]' failed"
        else
            die "pip install -e '.[dev]' failed"
        fi
    fi
    echo "$want_stamp" >"$STAMP"
    info "installed"
fi

printf '\nsetup.sh: done. Activate with: source .venv/bin/activate\n'
