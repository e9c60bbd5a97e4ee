#!/usr/bin/env bash
# The relay demo (the media plane alone): builds the media plane and rtp-load (release), starts the media plane on loopback,
# relays CALLS (default 200) calls of G.711-sized RTP (50 packets/s per direction) through it for DURATION (default 5) seconds
# and prints the result: offered/forwarded packets per second, loss, latency percentiles, relay CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
CALLS=${CALLS:-200}
DURATION=${DURATION:-5}
GRPC=127.0.0.1:${GRPC_PORT:-9090}

cargo build --release --locked -p media-plane -p bench
cpus=$(nproc)
relay_cpu=$(( cpus > 1 ? 1 : 0 ))
target/release/media-plane --grpc-listen "$GRPC" --ports 30000-39999 --cores 1 --first-cpu "$relay_cpu" &
relay=$!
trap 'kill $relay 2>/dev/null; wait $relay 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/${GRPC%:*}/${GRPC#*:}) 2>/dev/null && break
  kill -0 $relay 2>/dev/null || { echo "demo: media-plane exited" >&2; exit 1; }
  sleep 0.1
done
echo "demo: media-plane (pid $relay) on $GRPC; relaying $CALLS calls for ${DURATION}s" >&2
target/release/rtp-load --grpc "http://$GRPC" --calls "$CALLS" --duration "$DURATION" \
  --relay-pid "$relay" --cpu 0 --sockets 2 --label demo
