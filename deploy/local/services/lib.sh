# shellcheck shell=bash
# Shared plumbing for the local test services (sourced by kafka.sh, influxdb.sh, postgres.sh,
# mosquitto.sh). Each service script defines its own start/stop/status on top of these helpers.
#
# Guarantees every service script gets from here:
#   - state under $FL_VAR/services/<name>/ (pid file, config, data), logs under .../log/;
#   - downloads and builds cached under $FL_CACHE (~/.cache/fieldlink by default), so a second
#     start on the same machine does not touch the network;
#   - a pid file is trusted only if that pid is alive AND its command line carries the
#     service's marker, so a stale file left by kill -9 (or a reused pid) never blocks a start;
#   - stop is graceful first (the service's own signal), then SIGKILL after a grace period.

set -euo pipefail

FL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
FL_VAR=${FIELDLINK_VAR:-$FL_ROOT/var}
FL_CACHE=${FIELDLINK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldlink}
FL_SERVICES_DIR="$FL_ROOT/deploy/local/services"
# Everything runs on loopback only: these services are test fixtures, never exposed.
FL_HOST=127.0.0.1

say() { printf '[%s] %s\n' "$SVC_NAME" "$*"; }
warn() { printf '[%s] %s\n' "$SVC_NAME" "$*" >&2; }

# svc_init NAME MARKER: MARKER is a string that must appear in the process's command line.
svc_init() {
    SVC_NAME=$1
    SVC_MARKER=$2
    SVC_DIR="$FL_VAR/services/$SVC_NAME"
    SVC_LOG_DIR="$SVC_DIR/log"
    SVC_LOG="$SVC_LOG_DIR/$SVC_NAME.log"
    SVC_PIDFILE="$SVC_DIR/$SVC_NAME.pid"
    # shellcheck disable=SC2034  # used by the service scripts
    SVC_CACHE="$FL_CACHE/$SVC_NAME"
    mkdir -p "$SVC_DIR" "$SVC_LOG_DIR"
}

# A python3 for the stdlib-only readiness probes; the project venv is not needed for these.
fl_python() {
    local c
    for c in "$FL_ROOT/.venv/bin/python" python3 python; do
        if command -v "$c" >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    echo "no python3 found for the readiness probe; run deploy/local/setup.sh" >&2
    return 1
}

probe() { "$(fl_python)" "$FL_SERVICES_DIR/probe.py" "$@"; }

# Prints the pid if the pid file names a live process of this service; else removes a stale
# pid file and returns 1.
svc_pid() {
    local pid
    [[ -f $SVC_PIDFILE ]] || return 1
    pid=$(tr -dc '0-9' <"$SVC_PIDFILE")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$SVC_MARKER"; then
        echo "$pid"
        return 0
    fi
    rm -f "$SVC_PIDFILE"
    return 1
}

# Any process of this service still running without (or despite) a pid file: a previous
# start whose pid file was lost. Matching on the marker, which embeds this checkout's var/
# path, keeps other checkouts' services out of it.
svc_orphans() {
    local f p
    # grep itself matches (its argv holds the marker) but is gone by the kill -0 below.
    for f in $(grep -slaF -- "$SVC_MARKER" /proc/[0-9]*/cmdline 2>/dev/null); do
        p=${f#/proc/}
        p=${p%/cmdline}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        kill -0 "$p" 2>/dev/null && echo "$p"
    done
    return 0
}

# svc_spawn CMD...: runs CMD detached (own session, stdin closed) appending to the log, and
# records its pid. CMD must exec the server itself (no wrapper that forks) so the pid is right.
svc_spawn() {
    printf '\n==== %s start %s ====\n' "$SVC_NAME" "$(date -Is)" >>"$SVC_LOG"
    setsid "$@" >>"$SVC_LOG" 2>&1 </dev/null &
    local pid=$! i
    echo "$pid" >"$SVC_PIDFILE"
    # Until the forked shell has exec'd the server, its command line lacks the marker and
    # svc_pid would take it for dead; on a loaded machine that takes a noticeable moment.
    for ((i = 0; i < 100; i++)); do
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$SVC_MARKER" && return 0
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    return 0
}

svc_fail() {
    warn "ERROR: $*"
    warn "log: $SVC_LOG (last lines below)"
    if [[ -f $SVC_LOG ]]; then
        tail -n 25 "$SVC_LOG" | sed 's/^/    | /' >&2
    fi
    exit 1
}

# svc_wait_ready TIMEOUT PROBE_ARGS...: polls the probe until it succeeds; fails early (with
# the log) if the process died, or after TIMEOUT seconds.
svc_wait_ready() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout)) why=""
    while ((SECONDS < deadline)); do
        if why=$(probe "$@" 2>&1); then
            return 0
        fi
        if ! svc_pid >/dev/null; then
            svc_fail "$SVC_NAME exited during start-up (${why:-no probe output})"
        fi
        sleep 0.5
    done
    svc_fail "$SVC_NAME not ready after ${timeout}s: $why"
}

# svc_stop SIGNAL GRACE: the service's graceful signal, then SIGKILL after GRACE seconds.
svc_stop() {
    local sig=$1 grace=$2 pid p
    local pids=()
    if pid=$(svc_pid); then
        pids+=("$pid")
    fi
    while read -r p; do
        [[ -n $p && " ${pids[*]} " != *" $p "* ]] && pids+=("$p")
    done < <(svc_orphans)
    if ((${#pids[@]} == 0)); then
        say "not running"
        rm -f "$SVC_PIDFILE"
        return 0
    fi
    say "stopping (pid ${pids[*]}, SIG$sig)"
    kill -s "$sig" "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while ((SECONDS < deadline)); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive == 0)) && break
        sleep 0.3
    done
    for p in "${pids[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            warn "pid $p ignored SIG$sig for ${grace}s; sending SIGKILL"
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    rm -f "$SVC_PIDFILE"
    say "stopped"
}

# svc_already_running: returns 0 if the service is already running (the caller is done).
# Otherwise makes a start safe after kill -9: kills orphans of a lost start and waits until the
# previous process is fully gone, zombie included (a server that checks its lock file with
# kill(pid, 0), like PostgreSQL, would otherwise see its dead predecessor as alive).
svc_already_running() {
    local old="" p
    # Read before svc_pid, which removes a stale pid file.
    [[ -f $SVC_PIDFILE ]] && old=$(tr -dc '0-9' <"$SVC_PIDFILE")
    if svc_pid >/dev/null; then
        return 0
    fi
    local orphans
    orphans=$(svc_orphans | tr '\n' ' ')
    if [[ -n ${orphans// /} ]]; then
        warn "killing orphaned processes without a pid file: $orphans"
        # shellcheck disable=SC2086
        kill -9 $orphans 2>/dev/null || true
    fi
    for p in $old $orphans; do svc_wait_gone "$p" 15; done
    return 1
}

# svc_wait_gone PID SECONDS: until PID is no longer this service's process, nor exiting, nor a
# zombie (a reused pid that now belongs to something else is not waited for). A process killed
# with -9 keeps its sockets and locks while the kernel tears it down (seconds for a big JVM),
# and its command line reads empty meanwhile.
svc_wait_gone() {
    local deadline=$((SECONDS + $2))
    _ours_or_zombie() {
        local cmd
        [[ -e /proc/$1 ]] || return 1
        [[ $(awk '/^State/{print $2}' "/proc/$1/status" 2>/dev/null) == Z ]] && return 0
        cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
        [[ -z $cmd || $cmd == *"$SVC_MARKER"* ]]
    }
    while _ours_or_zombie "$1" && ((SECONDS < deadline)); do sleep 0.2; done
    if _ours_or_zombie "$1"; then
        warn "pid $1 still present after $2s"
    fi
    return 0
}

svc_usage() {
    echo "usage: $0 start|stop|status|restart" >&2
    exit 2
}

# Bash /dev/tcp check: is something already listening on PORT? (Another service or another
# checkout's instance: refuse rather than half-start.)
port_in_use() {
    (exec 3<>"/dev/tcp/$FL_HOST/$1") 2>/dev/null
}
