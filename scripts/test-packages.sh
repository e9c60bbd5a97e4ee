#!/usr/bin/env bash
# Tests the Debian packages of both planes (scripts/package.sh, packaging/) on this machine, as CI
# does after `cargo test` has built the debug binaries. Needs root: it installs and purges the
# packages. Without root it prints `skipped: needs root` and passes, unless REQUIRE_ROOT=1.
#
#   1. package: scripts/package.sh --no-build (the binaries in target/debug, stripped)
#   2. inspect: control fields, contents (binaries, units, configs, prompts), conffiles,
#      maintainer scripts with cargo-deb's systemd fragments
#   3. install both with dpkg -i: files (dpkg -L), conffiles, system users, state directories,
#      config permissions, unit enablement
#   4. units: `systemd-analyze verify` and `systemd-analyze security --offline=true` with a
#      threshold (both work without systemd as PID 1; CI's container has none, so the units
#      themselves are not started)
#   5. run what the units run, by hand: each binary as its service user, with the unit's
#      capabilities (ambient, bounding set, no_new_privs), umask and environment, on the
#      installed configuration unchanged, in a network namespace of its own (the shipped ports
#      5060/9090 are free there whatever else runs); the control plane must answer OPTIONS on
#      5060 (a privileged port: CAP_NET_BIND_SERVICE), the media plane serve gRPC and metrics, a
#      subscriber be added with the documented command, and both stop cleanly on SIGTERM. Then
#      the media plane's xdp backend on a veth, with exactly the unit's capabilities.
#      Without network namespaces: other ports, a copy of the control plane's configuration, no
#      xdp check.
#   6. purge both: nothing left in /usr/bin, /etc, /var/lib, the unit directories, the users.
# A trap purges and cleans up on any exit; if either package (or user) exists before the test,
# it stops without touching anything. Every step is bounded in time. Last line: a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"

if [ "$(id -u)" -ne 0 ]; then
  if [ "${REQUIRE_ROOT:-0}" = 1 ]; then
    echo "test-packages: FAILED: needs root (REQUIRE_ROOT=1)" >&2
    exit 1
  fi
  echo "test-packages: skipped: needs root"
  exit 0
fi

began=$(date +%s)
PKGS=(media-plane control-plane)
# Highest acceptable `systemd-analyze security` exposure (0.0 best .. 10.0 worst); the units
# score about 2.1 and 1.4.
declare -A MAX_EXPOSURE=([media-plane]=2.5 [control-plane]=2.0)
UNIT_DIR=/usr/lib/systemd/system

log() { echo "test-packages: $*" >&2; }
fail() {
  echo "test-packages: FAILED: $*" >&2
  exit 1
}

tmp=$(mktemp -d /tmp/test-packages.XXXXXX)
chmod 755 "$tmp"
ns=""
pids=()
installed=0
cleanup() {
  local rc=$?
  set +e
  for pid in "${pids[@]}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null && { timeout 10 tail --pid="$pid" -f /dev/null; kill -9 "$pid" 2>/dev/null; }
  done
  [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
  if [ "$installed" = 1 ]; then
    timeout 120 dpkg --purge "${PKGS[@]}" >/dev/null 2>&1 || log "cleanup: dpkg --purge ${PKGS[*]} failed"
  fi
  rm -rf "$tmp"
  if [ "$rc" -ne 0 ]; then
    echo "test-packages: FAILED after $(($(date +%s) - began)) s" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

for tool in dpkg dpkg-deb systemd-analyze setpriv python3 adduser; do
  command -v "$tool" >/dev/null || fail "$tool is missing (SETUP_PACKAGING=1 source scripts/setup.sh)"
done

# The machine must not have them already: a purge at the end would remove an operator's install.
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ -z "$status" ] || [ "$status" = not-installed ] || fail "package $p is already on this machine ($status): not touching it"
  ! getent passwd "$p" >/dev/null || fail "user $p already exists: not touching it"
  [ ! -e "/etc/$p" ] && [ ! -e "/var/lib/$p" ] || fail "/etc/$p or /var/lib/$p already exists: not touching it"
done

# 1. Package -------------------------------------------------------------------------------
log "1/6 packaging the binaries in target/debug"
mapfile -t debs < <(timeout 300 bash scripts/package.sh --no-build)
[ "${#debs[@]}" = 2 ] || fail "scripts/package.sh made ${#debs[@]} packages, not 2"
declare -A DEB
for d in "${debs[@]}"; do
  DEB[$(dpkg-deb --field "$d" Package)]=$d
done

# 2. Inspect -------------------------------------------------------------------------------
log "2/6 inspecting the packages"
for p in "${PKGS[@]}"; do
  deb=${DEB[$p]:-}
  [ -n "$deb" ] || fail "no package named $p among ${debs[*]}"
  timeout 30 dpkg-deb --info "$deb" >"$tmp/$p.info"
  timeout 30 dpkg-deb --contents "$deb" >"$tmp/$p.contents"
  depends=$(dpkg-deb --field "$deb" Depends)
  for dep in adduser libc6; do
    [[ "$depends" == *"$dep"* ]] || fail "$p: Depends ($depends) lacks $dep"
  done
  grep -q " ./usr/bin/$p\$" "$tmp/$p.contents" || fail "$p: no /usr/bin/$p in the package"
  grep -q "^-rwxr-xr-x .* ./usr/bin/$p\$" "$tmp/$p.contents" || fail "$p: /usr/bin/$p is not mode 755"
  grep -q " .$UNIT_DIR/$p.service\$" "$tmp/$p.contents" || fail "$p: no $UNIT_DIR/$p.service in the package"
  grep -q " ./etc/$p/$p.toml\$" "$tmp/$p.contents" || fail "$p: no /etc/$p/$p.toml in the package"
  [ "$(timeout 30 dpkg-deb --info "$deb" conffiles)" = "/etc/$p/$p.toml" ] || fail "$p: conffiles is not exactly /etc/$p/$p.toml"
  mkdir -p "$tmp/$p.control"
  dpkg-deb --control "$deb" "$tmp/$p.control"
  for script in postinst prerm postrm; do
    [ -x "$tmp/$p.control/$script" ] || fail "$p: no $script"
    sh -n "$tmp/$p.control/$script" || fail "$p: $script is not valid sh"
    ! grep -q '#DEBHELPER#' "$tmp/$p.control/$script" || fail "$p: $script still has the #DEBHELPER# token"
  done
  grep -q "deb-systemd-helper enable $p.service" "$tmp/$p.control/postinst" || fail "$p: postinst does not enable $p.service"
  grep -q "deb-systemd-helper purge $p.service" "$tmp/$p.control/postrm" || fail "$p: postrm does not purge $p.service"
done
mp_depends=$(dpkg-deb --field "${DEB[media-plane]}" Depends)
for dep in libopus0 libsrtp2-1; do
  [[ "$mp_depends" == *"$dep"* ]] || fail "media-plane: Depends ($mp_depends) lacks $dep"
done
prompts=0
for wav in prompts/*.wav; do
  [ -e "$wav" ] || fail "no prompts/*.wav in the repository to compare with"
  grep -q " ./usr/share/media-plane/prompts/$(basename "$wav")\$" "$tmp/media-plane.contents" \
    || fail "media-plane: prompt $(basename "$wav") is not in the package"
  prompts=$((prompts + 1))
done

# 3. Install -------------------------------------------------------------------------------
log "3/6 installing both (dpkg -i)"
installed=1
timeout 300 dpkg -i "${DEB[media-plane]}" "${DEB[control-plane]}" >"$tmp/dpkg-install.log" 2>&1 \
  || { cat "$tmp/dpkg-install.log" >&2; fail "dpkg -i"; }
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p")" = installed ] || fail "$p is not installed after dpkg -i"
  listed=$(dpkg -L "$p")
  for f in "/usr/bin/$p" "/etc/$p/$p.toml" "$UNIT_DIR/$p.service"; do
    grep -qx "$f" <<<"$listed" || fail "$p: dpkg -L does not list $f"
    [ -e "$f" ] || fail "$p: $f is not on disk"
  done
  dpkg-query -W -f='${Conffiles}\n' "$p" | grep -q "^ /etc/$p/$p.toml " || fail "$p: /etc/$p/$p.toml is not a registered conffile"
  # A system user (and group) of its own, without a login shell.
  IFS=: read -r _ _ uid gid _ home shell < <(getent passwd "$p") || fail "user $p was not created"
  [ "$uid" -lt 1000 ] || fail "user $p is not a system user (uid $uid)"
  [ "$(getent group "$gid" | cut -d: -f1)" = "$p" ] || fail "user $p's group is not $p"
  [[ "$shell" == */nologin || "$shell" == /bin/false ]] || fail "user $p has a login shell ($shell)"
  [ "$home" = "/var/lib/$p" ] || fail "user $p's home is $home, not /var/lib/$p"
  [ "$(stat -c '%U:%G %a' "/var/lib/$p")" = "$p:$p 750" ] || fail "/var/lib/$p is $(stat -c '%U:%G %a' "/var/lib/$p"), not $p:$p 750"
  [ "$(/usr/bin/$p --version)" = "$p $(dpkg-query -W -f='${Version}' "$p" | sed 's/-[^-]*$//')" ] \
    || fail "$p --version ($(/usr/bin/$p --version)) does not match the package version"
  if ldd "/usr/bin/$p" | grep 'not found' >&2; then fail "/usr/bin/$p: shared libraries missing (Depends incomplete?)"; fi
  # Enabled as on a systemd host (deb-systemd-helper works without systemd running).
  [ -L "/etc/systemd/system/multi-user.target.wants/$p.service" ] || fail "$p.service is not enabled"
done
[ "$(stat -c '%U:%G %a' /etc/control-plane/control-plane.toml)" = "root:control-plane 640" ] \
  || fail "/etc/control-plane/control-plane.toml is $(stat -c '%U:%G %a' /etc/control-plane/control-plane.toml), not root:control-plane 640"
[ "$(stat -c '%U:%G' /var/lib/media-plane/recordings)" = "media-plane:media-plane" ] || fail "/var/lib/media-plane/recordings is not the media-plane user's"
installed_prompts=$(find /usr/share/media-plane/prompts -name '*.wav' | wc -l)
[ "$installed_prompts" = "$prompts" ] || fail "$installed_prompts prompts installed, $prompts in the repository"

# 4. Units ---------------------------------------------------------------------------------
log "4/6 systemd-analyze verify and security (offline)"
declare -A EXPOSURE
# systemd-analyze verify leaves this marker behind (a manager in test mode writes it).
units_load_marker=/run/systemd/systemd-units-load
[ -e "$units_load_marker" ] && had_marker=1 || had_marker=0
for p in "${PKGS[@]}"; do
  unit="$UNIT_DIR/$p.service"
  # verify also loads the units this one names (and default.target's): only lines about ours
  # count, and any such line (even an "unknown key" warning, which does not fail verify) fails.
  if ! (cd "$tmp" && timeout 60 systemd-analyze verify "$unit") >"$tmp/$p.verify" 2>&1; then
    cat "$tmp/$p.verify" >&2
    fail "systemd-analyze verify $unit"
  fi
  if grep -F "$p.service" "$tmp/$p.verify" >&2; then
    fail "systemd-analyze verify $unit warns (above)"
  fi
  threshold=$(awk -v x="${MAX_EXPOSURE[$p]}" 'BEGIN { printf "%d", x * 10 }')
  rc=0
  (cd "$tmp" && timeout 60 systemd-analyze security --offline=true --threshold="$threshold" --no-pager "$unit") >"$tmp/$p.security" 2>&1 || rc=$?
  EXPOSURE[$p]=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$tmp/$p.security")
  [ -n "${EXPOSURE[$p]}" ] || { cat "$tmp/$p.security" >&2; fail "systemd-analyze security printed no exposure level for $p"; }
  log "  $p.service: exposure ${EXPOSURE[$p]} (at most ${MAX_EXPOSURE[$p]})"
  [ "$had_marker" = 1 ] || rm -f "$units_load_marker"
  if [ "$rc" -ne 0 ]; then
    grep '✗' "$tmp/$p.security" >&2 || true
    fail "$p.service exposure ${EXPOSURE[$p]} is above ${MAX_EXPOSURE[$p]} (systemd-analyze security exit $rc)"
  fi
done

# 5. Run -----------------------------------------------------------------------------------
log "5/6 running the installed binaries as their service users"

# The value of a [Service] setting of an installed unit.
unit_value() { sed -n "s/^$2=//p" "$UNIT_DIR/$1.service" | tail -n 1; }

# setpriv's capability list for the unit's AmbientCapabilities (e.g. +bpf,+net_admin).
unit_caps() {
  local caps
  caps=$(unit_value "$1" AmbientCapabilities | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' | paste -sd, -)
  [ "$(unit_value "$1" CapabilityBoundingSet)" = "$(unit_value "$1" AmbientCapabilities)" ] \
    || fail "$1.service: CapabilityBoundingSet differs from AmbientCapabilities (the test runs with one set)"
  echo "$caps"
}

# Starts `binary args...` as unit $1 runs it: its User/Group, capabilities, no_new_privs, UMask,
# Environment, cwd /, in the test's network namespace when there is one. Output to $tmp/$2.log.
start_as_unit() {
  local unit=$1 name=$2
  shift 2
  local user group caps umask_ env_
  user=$(unit_value "$unit" User)
  group=$(unit_value "$unit" Group)
  caps=$(unit_caps "$unit")
  umask_=$(unit_value "$unit" UMask)
  env_=$(unit_value "$unit" Environment)
  [ "$(unit_value "$unit" NoNewPrivileges)" = yes ] || fail "$unit.service: NoNewPrivileges is not yes"
  local cap_args=(--inh-caps=-all --ambient-caps=-all --bounding-set=-all)
  if [ -n "$caps" ]; then
    cap_args=(--inh-caps="-all,$caps" --ambient-caps="-all,$caps" --bounding-set="-all,$caps")
  fi
  local netns=()
  [ -n "$ns" ] && netns=(ip netns exec "$ns")
  : >"$tmp/$name.log"
  (
    cd /
    umask "${umask_:-0022}"
    exec "${netns[@]}" setpriv --reuid="$user" --regid="$group" --init-groups "${cap_args[@]}" --no-new-privs \
      env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $env_ "$@"
  ) >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  last_pid=$!
}

# Waits up to $3 s for $2 (an extended regex) in $tmp/$1.log while pid $last_pid lives.
wait_log() {
  local name=$1 pattern=$2 secs=$3 pid=$last_pid i
  for ((i = 0; i < secs * 10; i++)); do
    grep -Eq "$pattern" "$tmp/$name.log" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/$name.log" >&2; fail "$name exited before logging /$pattern/"; }
    sleep 0.1
  done
  cat "$tmp/$name.log" >&2
  fail "$name did not log /$pattern/ within $secs s"
}

# SIGTERM, then the exit status must be 0 within $2 s (what systemd counts as a clean stop).
stop_clean() {
  local name=$1 secs=$2 pid=$3 rc=0
  kill -TERM "$pid"
  timeout "$secs" tail --pid="$pid" -f /dev/null || { cat "$tmp/$name.log" >&2; fail "$name did not stop within $secs s of SIGTERM"; }
  wait "$pid" || rc=$?
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  [ "$rc" = 0 ] || { cat "$tmp/$name.log" >&2; fail "$name exited $rc after SIGTERM"; }
}

in_ns() { if [ -n "$ns" ]; then ip netns exec "$ns" "$@"; else "$@"; fi; }

candidate="pkgtest$$"
if timeout 10 ip netns add "$candidate" 2>/dev/null; then
  ns=$candidate
  ip -n "$ns" link set lo up
fi

mp_config=/etc/media-plane/media-plane.toml
cp_config=/etc/control-plane/control-plane.toml
mp_flags=()
if [ -n "$ns" ]; then
  grpc=127.0.0.1:9090 metrics=127.0.0.1:9091 sip=127.0.0.1:5060
  log "  in network namespace $ns, on the shipped addresses"
else
  # Other ports than the shipped ones, which something else here may hold.
  read -r p1 p2 p3 p4 p5 p6 < <(python3 -c 'import socket
s=[socket.socket() for _ in range(6)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  grpc=127.0.0.1:$p1 metrics=127.0.0.1:$p2 sip=127.0.0.1:$p4
  mp_flags=(--grpc-listen "$grpc" --metrics-listen "$metrics" --ng-listen "127.0.0.1:$p3")
  cp_config=$tmp/control-plane.toml
  sed -e "s|^#listen = \[\"udp:127.0.0.1:5060\", \"tcp:127.0.0.1:5060\"\]|listen = [\"udp:$sip\", \"tcp:$sip\"]|" \
    -e "/^\[api\]/a listen = \"127.0.0.1:$p5\"" -e "/^\[metrics\]/a listen = \"127.0.0.1:$p6\"" \
    /etc/control-plane/control-plane.toml >"$cp_config"
  grep -q "udp:$sip" "$cp_config" || fail "could not move the control plane's SIP port in its configuration copy"
  chgrp control-plane "$cp_config"
  chmod 640 "$cp_config"
  log "  no network namespace: on other ports (gRPC $grpc, SIP $sip)"
fi

# The media plane, shipped configuration (udp backend).
start_as_unit media-plane media-plane /usr/bin/media-plane --config "$mp_config" "${mp_flags[@]}"
mp_pid=$last_pid
wait_log media-plane 'media plane ready' 30
grep -q 'backend="udp"' "$tmp/media-plane.log" || fail "media plane did not start the udp backend: $(grep ready "$tmp/media-plane.log")"
grep -q "grpc=$grpc" "$tmp/media-plane.log" || fail "media plane is not on gRPC $grpc: $(grep ready "$tmp/media-plane.log")"
if grep -q $'\e\[' "$tmp/media-plane.log"; then fail "media plane's log has colour codes (NO_COLOR in the unit?)"; fi
in_ns timeout 10 python3 - "$grpc" "$metrics" <<'EOF' || fail "media plane: gRPC or metrics not answering"
import socket, sys, urllib.request
host, port = sys.argv[1].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=5).close()
body = urllib.request.urlopen("http://%s/metrics" % sys.argv[2], timeout=5).read().decode()
assert "media_legs" in body, body[:500]
EOF

# The control plane, on port 5060 (the unit's CAP_NET_BIND_SERVICE) in the namespace.
start_as_unit control-plane control-plane /usr/bin/control-plane --config "$cp_config"
cp_pid=$last_pid
wait_log control-plane "listening transport=Udp addr=$sip" 30
reply=$(in_ns timeout 10 python3 - "$sip" <<'EOF'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(3)
me = s.getsockname()[1]
msg = ("OPTIONS sip:sip.example.net SIP/2.0\r\n"
       "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKpkgtest1\r\n"
       "Max-Forwards: 70\r\n"
       "From: <sip:test@sip.example.net>;tag=pkgtest\r\n"
       "To: <sip:sip.example.net>\r\n"
       "Call-ID: pkgtest-options\r\n"
       "CSeq: 1 OPTIONS\r\n"
       "Content-Length: 0\r\n\r\n" % me)
for _ in range(3):
    s.sendto(msg.encode(), (host, int(port)))
    try:
        print(s.recv(65535).decode(errors="replace").split("\r\n")[0])
        break
    except socket.timeout:
        continue
EOF
) || true
[[ "$reply" == "SIP/2.0 200"* ]] || { cat "$tmp/control-plane.log" >&2; fail "control plane: OPTIONS got '${reply:-no answer}', not 200"; }
# The documented way to add a subscriber, on the live store.
timeout 30 runuser -u control-plane -- /usr/bin/control-plane --config "$cp_config" subscriber add \
  --user pkgtest --domain sip.example.net --password pkgtest >/dev/null || fail "control-plane subscriber add as the control-plane user"
timeout 30 runuser -u control-plane -- /usr/bin/control-plane --config "$cp_config" subscriber list | grep -qx 'pkgtest@sip.example.net' \
  || fail "the added subscriber is not listed"
[ "$(stat -c '%U' /var/lib/control-plane/control-plane.db)" = control-plane ] || fail "the store is not the control-plane user's"

stop_clean control-plane 30 "$cp_pid"
stop_clean media-plane 20 "$mp_pid"
ran="OPTIONS 200 on $sip"

# The xdp backend, with exactly the unit's capabilities (and its memlock: CAP_IPC_LOCK).
xdp="xdp not checked (no network namespace)"
if [ -n "$ns" ]; then
  ip -n "$ns" link add pkgv0 type veth peer name pkgv1
  ip -n "$ns" addr add 10.213.77.1/24 dev pkgv0
  ip -n "$ns" link set pkgv0 up
  ip -n "$ns" link set pkgv1 up
  start_as_unit media-plane media-plane-xdp /usr/bin/media-plane --config "$mp_config" \
    --backend xdp --interface pkgv0 --media-ip 10.213.77.1 --cores 1 --no-pin --grpc-listen 127.0.0.1:9190 --metrics-listen "" --ng-listen ""
  xdp_pid=$last_pid
  wait_log media-plane-xdp 'media plane ready' 30
  grep -q 'backend="xdp"' "$tmp/media-plane-xdp.log" || fail "media plane did not start the xdp backend: $(grep ready "$tmp/media-plane-xdp.log")"
  stop_clean media-plane-xdp 20 "$xdp_pid"
  xdp="xdp backend ready with the unit's capabilities ($(unit_caps media-plane | tr -d +))"
fi
pids=()
[ -n "$ns" ] && { ip netns del "$ns"; ns=""; }

# 6. Purge ---------------------------------------------------------------------------------
log "6/6 purging both"
timeout 300 dpkg --purge "${PKGS[@]}" >"$tmp/dpkg-purge.log" 2>&1 || { cat "$tmp/dpkg-purge.log" >&2; fail "dpkg --purge"; }
installed=0
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ -z "$status" ] || [ "$status" = not-installed ] || fail "$p is still known to dpkg after purge ($status)"
  for f in "/usr/bin/$p" "/etc/$p" "/var/lib/$p" "$UNIT_DIR/$p.service" "/lib/systemd/system/$p.service" \
    "/etc/systemd/system/multi-user.target.wants/$p.service" "/var/lib/systemd/deb-systemd-helper-enabled/$p.service.dsh-also" \
    "/var/lib/systemd/deb-systemd-helper-masked/$p.service"; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f is left after purge"
  done
  ! getent passwd "$p" >/dev/null || fail "user $p is left after purge"
  ! getent group "$p" >/dev/null || fail "group $p is left after purge"
done
[ ! -e /usr/share/media-plane ] || fail "/usr/share/media-plane is left after purge"

elapsed=$(($(date +%s) - began))
echo "test-packages: ok in ${elapsed} s: media-plane ($(du -h "${DEB[media-plane]}" | cut -f1), $prompts prompts) and control-plane ($(du -h "${DEB[control-plane]}" | cut -f1)) packaged, installed, verified (exposure ${EXPOSURE[media-plane]} and ${EXPOSURE[control-plane]}), run as their users ($ran; $xdp), purged clean"
