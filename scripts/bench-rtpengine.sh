#!/usr/bin/env bash
# Benchmarks rtpengine (Debian's rtpengine-daemon, userspace forwarding only) with rtp-load, the
# same way scripts/demo.sh measures the media plane: rtpengine pinned to CPU 1 with one worker
# thread, rtp-load pinned to CPU 0, CALLS (default 1000) calls of G.711-sized RTP (50 packets/s per
# direction) for DURATION (default 10) seconds. Prints the human summary on stderr and one JSON line
# (with "peer":"rtpengine") on stdout; extra arguments go to rtp-load (e.g. --search).
#
#   CALLS=200 DURATION=3 scripts/bench-rtpengine.sh
#
# Env: NG_PORT (default 2223), RTPENGINE_PORTS (default 40000-59999), RTPENGINE_CPU (1), GEN_CPU (0),
# RTPENGINE_LOG (default target/rtpengine.log), NO_BUILD=1 to skip the cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CALLS=${CALLS:-1000}
DURATION=${DURATION:-10}
NG_PORT=${NG_PORT:-2223}
NG=127.0.0.1:$NG_PORT
PORTS=${RTPENGINE_PORTS:-40000-59999}
RTPENGINE_CPU=${RTPENGINE_CPU:-1}
GEN_CPU=${GEN_CPU:-0}
LOG=${RTPENGINE_LOG:-target/rtpengine.log}

if ! command -v rtpengine >/dev/null; then
  echo "bench-rtpengine: installing rtpengine-daemon" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Debian's maintainer scripts try to start the service; there is no init here to do it, and the
  # daemon this script runs is its own, started below.
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rtpengine-daemon >/dev/null
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --locked -p bench
fi
mkdir -p "$(dirname "$LOG")"

# --foreground so that $! is rtpengine itself (the pid rtp-load measures); everything else is in
# bench/rtpengine/rtpengine.conf (userspace only: table = -1; one worker thread).
taskset -c "$RTPENGINE_CPU" rtpengine --config-file=bench/rtpengine/rtpengine.conf --config-section=rtpengine \
  --foreground --listen-ng="$NG" --port-min="${PORTS%-*}" --port-max="${PORTS#*-}" >"$LOG" 2>&1 &
relay=$!
trap 'kill $relay 2>/dev/null; wait $relay 2>/dev/null || true' EXIT

# Ready once it answers an ng ping (rtp-load's own client does the same check, with retries).
ready=0
for _ in $(seq 1 50); do
  kill -0 $relay 2>/dev/null || { echo "bench-rtpengine: rtpengine exited; its log ($LOG):" >&2; cat "$LOG" >&2; exit 1; }
  if python3 - "$NG_PORT" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
s.sendto(b"ready d7:command4:pinge", ("127.0.0.1", int(sys.argv[1])))
sys.exit(0 if s.recv(100) == b"ready d6:result4:ponge" else 1)
EOF
  then ready=1; break; fi
  sleep 0.1
done
[ $ready = 1 ] || { echo "bench-rtpengine: rtpengine on $NG did not answer ping; its log ($LOG):" >&2; cat "$LOG" >&2; exit 1; }
echo "bench-rtpengine: rtpengine $(rtpengine --version 2>&1 | sed 's/.*Version: //') (pid $relay, CPU $RTPENGINE_CPU) on $NG; $CALLS calls for ${DURATION}s" >&2

taskset -c "$GEN_CPU" target/release/rtp-load --peer rtpengine --ng "$NG" --calls "$CALLS" --duration "$DURATION" \
  --relay-pid "$relay" --cpu "$GEN_CPU" --sockets 2 --label rtpengine "$@"
