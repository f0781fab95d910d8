#!/usr/bin/env bash
# All of fieldlink's local test services at once.
#
#   deploy/local/services/all.sh start|stop|status [SERVICE...]
#
# Services: kafka influxdb postgres mosquitto (all of them by default). start brings up each
# one in turn and fails if any fails (the others stay up, so their logs can be read); stop
# stops all and never fails on one that is not running; status prints one line each and exits
# non-zero if any is not running and ready.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ALL=(kafka influxdb postgres mosquitto)

cmd=${1:-}
shift || true
services=("$@")
((${#services[@]})) || services=("${ALL[@]}")
for s in "${services[@]}"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || {
        echo "unknown service: $s (known: ${ALL[*]})" >&2
        exit 2
    }
done

rc=0
case $cmd in
start)
    # Cheapest first, so a broken Java/Go set-up does not hide the others' state.
    for s in mosquitto postgres influxdb kafka; do
        [[ " ${services[*]} " == *" $s "* ]] || continue
        bash "$HERE/$s.sh" start || rc=1
    done
    ;;
stop)
    for s in "${services[@]}"; do bash "$HERE/$s.sh" stop || rc=1; done
    ;;
status)
    for s in "${services[@]}"; do bash "$HERE/$s.sh" status || rc=1; done
    ;;
*)
    echo "usage: $0 start|stop|status [${ALL[*]}]" >&2
    exit 2
    ;;
esac
exit $rc
