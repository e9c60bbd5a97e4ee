#!/usr/bin/env bash
# Starts the reference stack by hand, in the foreground, until Ctrl-C: rtpengine (userspace, ng on
# RTPENGINE_NG) and Kamailio with bench/kamailio/kamailio.cfg on 127.0.0.1:KAM_PORT, with a fresh
# SQLite database of USERS generated subscribers plus alice, bob, carol, dave (password secret).
#
#   bench/kamailio/run.sh                      # SIP on 127.0.0.1:5080, UDP and TCP
#   KAM_PORT=5090 USERS=100 DEBUG=1 bench/kamailio/run.sh
#
# Env: KAM_PORT (5080), USERS (1000), DB (/dev/shm/kamailio-bench.db), RTPENGINE_NG
# (127.0.0.1:2223), FR_INV_TIMER (no-answer timer, ms, 30000), DEBUG=1 (log every request and
# reply), KAM_MEM (tlsf), CPU (pin both to this CPU; unpinned by default), LOGDIR (target/kamailio).
set -euo pipefail
cd "$(dirname "$0")/../.."
KAM_PORT=${KAM_PORT:-5080}
USERS=${USERS:-1000}
DB=${DB:-/dev/shm/kamailio-bench.db}
RTPENGINE_NG=${RTPENGINE_NG:-127.0.0.1:2223}
FR_INV_TIMER=${FR_INV_TIMER:-30000}
KAM_MEM=${KAM_MEM:-tlsf}
LOGDIR=${LOGDIR:-target/kamailio}
PIN=(); [ -z "${CPU:-}" ] || PIN=(taskset -c "$CPU")
mkdir -p "$LOGDIR"

scripts/sipp/make-users.sh "$USERS" target/sipp
bench/kamailio/setup-db.sh "$DB" target/sipp/subscribers.sql

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

"${PIN[@]}" rtpengine --config-file=bench/rtpengine/rtpengine.conf --config-section=rtpengine --foreground \
  --listen-ng="$RTPENGINE_NG" --log-level="${RTPENGINE_LOG_LEVEL:-6}" >"$LOGDIR/rtpengine.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  python3 - "${RTPENGINE_NG%:*}" "${RTPENGINE_NG#*:}" <<'PY' 2>/dev/null && break
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b"r d7:command4:pinge", (sys.argv[1], int(sys.argv[2])))
sys.exit(0 if s.recv(100) == b"r d6:result4:ponge" else 1)
PY
  sleep 0.1
done

defs=(-A "LISTEN_UDP=udp:127.0.0.1:$KAM_PORT" -A WITH_TCP -A "LISTEN_TCP=tcp:127.0.0.1:$KAM_PORT"
      -A "DBURL=\"sqlite://$DB\"" -A "RTPENGINE_SOCK=\"udp:$RTPENGINE_NG\"" -A "FR_INV_TIMER=$FR_INV_TIMER")
[ "${DEBUG:-0}" != 1 ] || defs+=(-A WITH_DEBUG)
"${PIN[@]}" kamailio -f bench/kamailio/kamailio.cfg -DD -E -m 256 -M 32 -x "$KAM_MEM" "${defs[@]}" >"$LOGDIR/kamailio.log" 2>&1 &
pids+=($!)
echo "run: Kamailio on 127.0.0.1:$KAM_PORT (UDP, TCP), rtpengine ng on $RTPENGINE_NG; logs in $LOGDIR; Ctrl-C stops both" >&2
wait -n "${pids[@]}" || true
echo "run: a process exited; logs in $LOGDIR" >&2
