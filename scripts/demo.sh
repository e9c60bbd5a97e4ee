#!/usr/bin/env bash
# The demo: the whole product on loopback. Builds both planes (release), starts the media plane
# and the control plane with their shipped defaults (SIP on 127.0.0.1:5060, the media plane's
# gRPC API on 127.0.0.1:9090), adds two subscribers, registers two phones (sipp: bob answers and
# echoes the audio, alice calls), places CALLS calls from alice to bob through the control plane,
# each with G.711 audio both ways anchored in the media plane for CALL_SECONDS, and prints the
# result: calls answered and failed, set-up time percentiles, audio packets relayed, relay loss,
# the CPU each plane used, and one JSON line.
#
#   CALLS [200]  RATE [20] calls/s  CALL_SECONDS [10]  (about RATE x CALL_SECONDS calls at once)
#   KEEP=1 keeps the working directory (logs, sipp statistics) and prints where it is.
#
# The phones are sipp scenarios from scripts/sipp (uac-call.xml, uas-answer.xml with -rtp_echo);
# the set-up time is sipp's, from the first INVITE to the 200 OK (the 407 round included).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
CALLS=${CALLS:-200}
RATE=${RATE:-20}
CALL_SECONDS=${CALL_SECONDS:-10}
SIP=127.0.0.1:5060
GRPC=http://127.0.0.1:9090
for v in CALLS RATE CALL_SECONDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "demo: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done

log() { echo "demo: $*" >&2; }
cargo build --release --locked -p media-plane -p control-plane -p bench
BIN=$ROOT/target/release
WORK=$(mktemp -d /tmp/demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then log "logs and statistics kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for port in 5060 9090; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    log "port $port is already in use on 127.0.0.1 (another demo or a SIP server?); stop it first"; exit 1
  fi
done

# CPU placement: the media plane on CPU 1 (if there is one), everything else on CPU 0.
cpus=$(nproc)
mp_cpu=$(( cpus > 1 ? 1 : 0 ))

"$BIN/media-plane" --first-cpu "$mp_cpu" >"$WORK/media-plane.log" 2>&1 &
MP=$!; PIDS+=($MP)
cat >"$WORK/control-plane.toml" <<EOF
# Everything else is the shipped default (see control-plane/src/config.rs).
[sip]
domains = ["sip.test"]
[store]
path = "$WORK/subscribers.db"
EOF
for user in alice bob; do
  "$BIN/control-plane" --config "$WORK/control-plane.toml" subscriber add --user $user --domain sip.test --password secret >/dev/null
done
taskset -c 0 "$BIN/control-plane" --config "$WORK/control-plane.toml" >"$WORK/control-plane.out" 2>"$WORK/control-plane.log" &
CP=$!; PIDS+=($CP)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/5060) 2>/dev/null && break
  kill -0 $MP 2>/dev/null || { log "media-plane exited:"; tail -5 "$WORK/media-plane.log" >&2; exit 1; }
  kill -0 $CP 2>/dev/null || { log "control-plane exited:"; tail -5 "$WORK/control-plane.log" >&2; exit 1; }
  sleep 0.1
done
log "media plane (pid $MP, CPU $mp_cpu) on $GRPC; control plane (pid $CP, CPU 0) on $SIP"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
mp0=$(cpu_ticks $MP); cp0=$(cpu_ticks $CP)

SIPP=(taskset -c 0 sipp "$SIP" -nostdin -trace_err)
cd scripts/sipp
# Phones: bob on :5090 (answers, echoes audio from port 6000), alice on :5070.
"${SIPP[@]}" -sf register.xml -inf csv/bob.csv -auth_uri sip.test -p 5090 -m 1 -timeout 10 -timeout_error \
  -error_file "$WORK/register-bob.err" >"$WORK/register-bob.out" 2>&1 \
  || { log "bob could not register:"; tail -5 "$WORK/register-bob.err" >&2; exit 1; }
"${SIPP[@]}" -sf register.xml -inf csv/alice.csv -auth_uri sip.test -p 5070 -m 1 -timeout 10 -timeout_error \
  -error_file "$WORK/register-alice.err" >"$WORK/register-alice.out" 2>&1 \
  || { log "alice could not register:"; tail -5 "$WORK/register-alice.err" >&2; exit 1; }
log "alice and bob registered (digest MD5); placing $CALLS calls at $RATE/s, ${CALL_SECONDS}s of audio each"

"${SIPP[@]}" -sf uas-answer.xml -p 5090 -mp 6000 -rtp_echo -m "$CALLS" -error_file "$WORK/uas.err" \
  >"$WORK/uas.out" 2>&1 &
UAS=$!; PIDS+=($UAS)
sleep 0.3
start=$(date +%s.%N)
limit=$(( CALLS / RATE + CALL_SECONDS + 60 ))
set +e
"${SIPP[@]}" -sf uac-call.xml -inf csv/alice-calls-bob.csv -auth_uri bob@sip.test -p 5070 -mp 7000 \
  -r "$RATE" -m "$CALLS" -l "$CALLS" -d $(( CALL_SECONDS * 1000 )) -timeout "${limit}s" -timeout_error \
  -trace_stat -stf "$WORK/uac-stat.csv" -fd 1 -trace_rtt -rtt_freq 1 -error_file "$WORK/uac.err" \
  >"$WORK/uac.out" 2>&1 &
UAC=$!; PIDS+=($UAC)
while kill -0 $UAC 2>/dev/null; do
  sleep 2
  kill -0 $UAC 2>/dev/null || break
  progress=$("$BIN/media-stats" --grpc "$GRPC" 2>/dev/null || true)
  [ -n "$progress" ] && log "  $(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print("calls up %d, packets relayed %d" % (s["bridges"], s["packets_forwarded"]))' "$progress")"
done
wait $UAC; uac_rc=$?
set -e
elapsed=$(python3 -c "import time,sys; print('%.1f' % (time.time() - float(sys.argv[1])))" "$start")
# Calls have ended; give the BYE handling a moment, then read the media plane's totals.
for _ in $(seq 1 50); do
  legs=$("$BIN/media-stats" --grpc "$GRPC" | python3 -c 'import json,sys; print(json.load(sys.stdin)["legs"])')
  [ "$legs" = 0 ] && break
  sleep 0.1
done
media=$("$BIN/media-stats" --grpc "$GRPC")
mp1=$(cpu_ticks $MP); cp1=$(cpu_ticks $CP)
kill -TERM $CP; wait $CP || true
counters=$(tail -1 "$WORK/control-plane.out")
# sipp names its set-up time file after the scenario and its pid (taskset exec'd sipp).
mv "$ROOT/scripts/sipp/uac-call_${UAC}_rtt.csv" "$WORK/uac-rtt.csv" 2>/dev/null || true

python3 - "$WORK" "$CALLS" "$RATE" "$CALL_SECONDS" "$elapsed" "$uac_rc" "$media" "$counters" \
  "$(( mp1 - mp0 ))" "$(( cp1 - cp0 ))" "$(getconf CLK_TCK)" <<'EOF'
import csv, json, os, sys
work, calls, rate, call_s, elapsed, uac_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
media, counters = json.loads(sys.argv[7]), json.loads(sys.argv[8])
mp_ticks, cp_ticks, hz = int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11])

rows = [r for r in csv.reader(open(os.path.join(work, "uac-stat.csv")), delimiter=";") if r]
stat = dict(zip(rows[0], rows[-1]))
n = lambda k: int(float(stat.get(k) or 0))
ok, failed = n("SuccessfulCall(C)"), n("FailedCall(C)")

setup = []
path = os.path.join(work, "uac-rtt.csv")
if os.path.exists(path):
    for r in csv.reader(open(path), delimiter=";"):
        try: setup.append(float(r[1]))
        except (IndexError, ValueError): pass
setup.sort()
pct = lambda p: setup[min(len(setup) - 1, int(p / 100 * len(setup)))] if setup else None

relayed, received = media["packets_forwarded"], media["packets_in"]
lost = received - relayed
mp_cpu_s, cp_cpu_s = mp_ticks / hz, cp_ticks / hz
leaked = media["legs"]
result = {
    "calls": calls, "answered": counters.get("calls_answered"), "completed": counters.get("calls_completed"),
    "failed": failed, "sipp_successful": ok,
    "setup_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": setup[-1] if setup else None},
    "audio_packets_relayed": relayed, "audio_packets_in": received,
    "relay_lost": lost, "relay_loss_pct": round(100.0 * lost / received, 4) if received else 0.0,
    "drops": media["drops"], "legs_left": leaked,
    "media_allocations": counters.get("media_allocations"), "media_releases": counters.get("media_releases"),
    "media_plane_cpu_s": round(mp_cpu_s, 2), "control_plane_cpu_s": round(cp_cpu_s, 2),
    "media_cpu_us_per_packet": round(mp_cpu_s * 1e6 / relayed, 2) if relayed else None,
    "control_cpu_ms_per_call": round(cp_cpu_s * 1e3 / calls, 2),
    "elapsed_s": elapsed, "rate_per_s": rate, "call_seconds": call_s,
}
fmt = lambda v: "-" if v is None else ("%.1f" % v)
print("%d calls through control plane + media plane: %d answered and completed, %d failed (sipp)" % (calls, counters.get("calls_completed", 0), failed), file=sys.stderr)
print("  set-up ms (INVITE to 200, digest round included): p50 %s  p90 %s  p99 %s  max %s" % tuple(fmt(result["setup_ms"][k]) for k in ("p50", "p90", "p99", "max")), file=sys.stderr)
print("  audio: %d RTP packets relayed of %d received (%d lost, %.4f%%), legs left %d" % (relayed, received, lost, result["relay_loss_pct"], leaked), file=sys.stderr)
print("  CPU: media plane %.2f s (%s µs/packet), control plane %.2f s (%s ms/call), %.1f s wall" % (mp_cpu_s, result["media_cpu_us_per_packet"], cp_cpu_s, result["control_cpu_ms_per_call"], elapsed), file=sys.stderr)
print(json.dumps(result, separators=(",", ":")))
good = uac_rc == 0 and failed == 0 and counters.get("calls_completed") == calls and leaked == 0
sys.exit(0 if good else 1)
EOF
