#!/usr/bin/env bash
# Relay benchmark across a veth pair, in one run: the media plane with the AF_XDP backend, the media
# plane with the UDP backend, and rtpengine (userspace), each in turn in namespace ${P}dut pinned to
# CPU 1 with one worker; rtp-load in namespace ${P}gen pinned to CPU 0. One single-queue veth pair
# (native XDP, copy-mode AF_XDP on veth), TX checksum offload off. For each call count in
# CALLS_LIST (default "100 500 1000" = 10k/50k/100k packets/s), REPEAT rounds (default 1).
# Results: one JSON line per run in $OUT (default target/bench/xdp-<date>.jsonl), then a table.
# Needs root. Builds nothing (run `cargo build --release -p media-plane -p bench` first).
#
#   REPEAT=3 DURATION=10 bash scripts/bench-xdp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-xdp: needs root (network namespaces, XDP)" >&2; exit 77; }
P=${PREFIX:-mpb}
CALLS_LIST=${CALLS_LIST:-"100 500 1000"}
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-1}
RELAYS=${RELAYS:-"xdp udp rtpengine"}
OUT=${OUT:-target/bench/xdp-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
GEN_IP=10.78.1.1 DUT_IP=10.78.1.2
mkdir -p "$(dirname "$OUT")"

down() { ip netns del ${P}gen 2>/dev/null || true; ip netns del ${P}dut 2>/dev/null || true; }
down
trap down EXIT
ip netns add ${P}gen
ip netns add ${P}dut
ip -n ${P}dut link add ${P}d0 numrxqueues 1 numtxqueues 1 type veth peer name ${P}g0 netns ${P}gen numrxqueues 1 numtxqueues 1
ip -n ${P}dut addr add $DUT_IP/24 dev ${P}d0
ip -n ${P}gen addr add $GEN_IP/24 dev ${P}g0
for ns in gen dut; do
  ip -n ${P}$ns link set lo up
  ifc=${P}d0; [ $ns = gen ] && ifc=${P}g0
  ip netns exec ${P}$ns ethtool -K $ifc tx off >/dev/null
  ip -n ${P}$ns link set $ifc up
done
for _ in $(seq 1 50); do ip -n ${P}dut -o link show dev ${P}d0 | grep -q 'state UP' && break; sleep 0.1; done
ip netns exec ${P}gen ping -c 1 -W 2 $DUT_IP >/dev/null

wait_port() { for _ in $(seq 1 100); do ip netns exec ${P}gen bash -c "exec 3<>/dev/tcp/$DUT_IP/$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

run() { # relay calls
  local relay=$1 calls=$2 pid
  case $relay in
    xdp|udp)
      ip netns exec ${P}dut target/release/media-plane --backend $relay $([ $relay = xdp ] && echo --interface ${P}d0) \
        --media-ip $DUT_IP --grpc-listen $DUT_IP:9090 --ports 30000-39999 --cores 1 --first-cpu 1 2>target/bench/xdp-relay.log &
      pid=$!
      wait_port 9090
      ip netns exec ${P}gen taskset -c 0 target/release/rtp-load --grpc http://$DUT_IP:9090 --local-ip $GEN_IP \
        --relay-pid $pid --cpu 0 --sockets 2 --calls $calls --duration "$DURATION" --label media-plane-$relay | tee -a "$OUT" || true
      ;;
    rtpengine)
      ip netns exec ${P}dut taskset -c 1 rtpengine --config-file=bench/rtpengine/rtpengine.conf --config-section=rtpengine \
        --foreground --interface=$DUT_IP --listen-ng=$DUT_IP:2223 --port-min=40000 --port-max=59999 >target/bench/xdp-rtpengine.log 2>&1 &
      pid=$!
      sleep 1
      ip netns exec ${P}gen taskset -c 0 target/release/rtp-load --peer rtpengine --ng $DUT_IP:2223 --local-ip $GEN_IP \
        --relay-pid $pid --cpu 0 --sockets 2 --calls $calls --duration "$DURATION" --label rtpengine | tee -a "$OUT" || true
      ;;
  esac
  kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
}

for r in $(seq 1 "$REPEAT"); do
  for calls in $CALLS_LIST; do
    for relay in $RELAYS; do
      echo "== round $r: $relay, $calls calls" >&2
      run $relay $calls
    done
  done
done

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"\nresults: {sys.argv[1]}")
print("| relay | calls | forwarded pps | loss | p50 µs | p99 µs | p99.9 µs | relay CPU µs/pkt | relay CPU % core | steal % |")
print("|---|---|---|---|---|---|---|---|---|---|")
f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
for r in rows:
    l = r["latency_us"]
    print(f"| {r.get('label')} | {r['calls']} | {r['forwarded_pps']:.0f} | {r['lost']} | {l['p50']:.0f} | {l['p99']:.0f} | {l['p999']:.0f} | {f(r.get('relay_cpu_us_per_pkt'))} | {f(r.get('relay_cpu_pct'),1)} | {f(r.get('steal_pct'))} |")
PY
