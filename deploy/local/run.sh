#!/usr/bin/env bash
# fieldlink's one-command demo: the README's first command.
#
#   deploy/local/run.sh            # runs until Ctrl-C
#   FIELDLINK_DEMO_SECONDS=60 deploy/local/run.sh   # runs 60 s, checks data arrived, exits
#
# 1. deploy/local/setup.sh (system packages, .venv; quick when done);
# 2. InfluxDB (the dashboards' hot store) on 127.0.0.1:18086 via deploy/local/services;
#    everything else runs on the cloud tier's embedded defaults: no Kafka, the embedded bus in
#    var/cloud/bus.sqlite3;
# 3. MQTT accounts for the simulated fleet and an operator, a dashboard login;
# 4. the cloud tier (ingest, InfluxDB and Parquet sinks, dashboard), the gateway (MQTT broker,
#    CoAP, buffer, alerts, uplink) and a simulated fleet of 100 sensors (config/sim.yaml);
# 5. prints the dashboard URL and the logins; Ctrl-C (or SIGTERM) stops everything cleanly.
#
# State lives in var/ (git-ignored); logs in var/demo/logs/.  Configuration: config/*.yaml.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
LOGS="$ROOT/var/demo/logs"
PY="$ROOT/.venv/bin"
OPERATOR=${FIELDLINK_DEMO_OPERATOR:-operator}
OPERATOR_PW=${FIELDLINK_DEMO_PASSWORD:-fieldlink-demo}
DEVICE_PW=${FIELDLINK_DEMO_DEVICE_PASSWORD:-fieldlink-demo-sensor}
SECONDS_TO_RUN=${FIELDLINK_DEMO_SECONDS:-0}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

say "setup"
bash "$ROOT/deploy/local/setup.sh" || die "setup failed"

say "InfluxDB (hot store for the dashboards)"
influx_was_running=0
bash "$ROOT/deploy/local/services/influxdb.sh" status >/dev/null 2>&1 && influx_was_running=1
bash "$ROOT/deploy/local/services/influxdb.sh" start || die "InfluxDB did not start"

mkdir -p "$LOGS" "$ROOT/var/gateway" "$ROOT/var/cloud"
say "accounts"
"$PY/python" "$ROOT/deploy/local/demo_accounts.py" --sim config/sim.yaml \
    --credentials var/gateway/mqtt-credentials.json --device-password "$DEVICE_PW" \
    --operator "$OPERATOR" --operator-password "$OPERATOR_PW" || die "accounts failed"
if ! "$PY/fieldlink" cloud web users list -c config/cloud.yaml 2>/dev/null \
        | grep -qw -- "$OPERATOR"; then
    printf '%s\n' "$OPERATOR_PW" | "$PY/fieldlink" cloud web users add "$OPERATOR" \
        -c config/cloud.yaml --password-stdin >/dev/null || die "dashboard user failed"
fi

pids=()
names=()
start() {
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

stopping=0
cleanup() {
    ((stopping)) && return
    stopping=1
    say "stopping"
    local i
    # the fleet first, then the gateway (it drains to the cloud), then the cloud tier
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null
    done
    # an InfluxDB that was already running (the test services) is left alone
    if ((!influx_was_running)); then
        bash "$ROOT/deploy/local/services/influxdb.sh" stop >/dev/null 2>&1 || true
    fi
    say "stopped; logs in $LOGS"
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

wait_port() {  # name port
    local i
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    cleanup
    die "$1 did not listen on port $2 within 60 s; see $LOGS/$1.log"
}

say "cloud tier"
start cloud-ingest "$PY/fieldlink" cloud ingest --config config/cloud.yaml
start sink-influxdb "$PY/fieldlink" cloud sink influxdb -c config/cloud.yaml --http-port 9102
start sink-parquet "$PY/fieldlink" cloud sink parquet -c config/cloud.yaml --http-port 9103
start dashboard "$PY/fieldlink" cloud web -c config/cloud.yaml
wait_port cloud-ingest 8700
wait_port dashboard 8800

say "gateway"
start gateway "$PY/fieldlink" gateway run --config config/gateway.yaml
wait_port gateway 1883

say "simulated fleet"
FIELDLINK_TARGET__PASSWORD="$DEVICE_PW" start fleet "$PY/fieldlink" sim run \
    --config config/sim.yaml --username '{device_id}' --duration 0 --quiet

cat <<EOF

  fieldlink is running.

  Dashboard        http://127.0.0.1:8800      login: $OPERATOR / $OPERATOR_PW
  Gateway status   http://127.0.0.1:9100/status   (same operator account)
  Gateway metrics  http://127.0.0.1:9100/metrics
  MQTT broker      127.0.0.1:1883  e.g. mosquitto_sub -h 127.0.0.1 -u $OPERATOR -P $OPERATOR_PW -t 'alerts/#' -v
  Logs             $LOGS/

  Ctrl-C stops everything.
EOF

if ((SECONDS_TO_RUN > 0)); then
    sleep "$SECONDS_TO_RUN"
    rows=$("$PY/python" - <<'PYEOF'
import json, urllib.request
with urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=5) as r:
    text = r.read().decode()
total = 0.0
for line in text.splitlines():
    if line.startswith("fieldlink_gateway_uplink_readings_total"):
        total += float(line.rsplit(" ", 1)[1])
print(int(total))
PYEOF
)
    cleanup
    if [[ ${rows:-0} -gt 0 ]]; then
        say "demo ok: $rows readings reached the cloud"
        exit 0
    fi
    die "no reading reached the cloud in $SECONDS_TO_RUN s; see $LOGS/"
fi

# Ctrl-C ends it; a component that dies ends the demo too (and says which)
while :; do
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[i]}" 2>/dev/null; then
            wait "${pids[i]}"
            rc=$?
            printf 'run.sh: %s exited (%s); see %s/%s.log\n' "${names[i]}" "$rc" "$LOGS" \
                "${names[i]}" >&2
            cleanup
            exit 1
        fi
    done
    sleep 1
done
