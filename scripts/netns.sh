#!/usr/bin/env bash
# The gen ↔ dut ↔ sink test topology: three network namespaces joined by two veth pairs, for the XDP
# tests and the benchmarks.
#
#   ${P}gen                  ${P}dut                          ${P}sink
#   ${P}gen0 ═══ veth ═══ ${P}dut0   ${P}dut1 ═══ veth ═══ ${P}sink0
#   10.77.1.1/24         10.77.1.2/24   10.77.2.1/24        10.77.2.2/24
#   fd77:1::1/64         fd77:1::2/64   fd77:2::1/64        fd77:2::2/64
#
# gen routes 10.77.2.0/24 (fd77:2::/64) via dut, sink routes 10.77.1.0/24 (fd77:1::/64) via dut, but
# dut does not forward (the media plane relays, not the kernel) unless FORWARD=1. Every veth has
# 2 RX and 2 TX queues and TX checksum offload off, so the checksums on the wire are real.
#
# Usage: scripts/netns.sh up|down|status [PREFIX]     PREFIX: 1-10 of [a-z0-9], default "mp"
#
# Only names that start with PREFIX are ever created or deleted: `down` deletes the three namespaces
# (which removes their veths) and nothing else. `up` is idempotent: it creates what is missing and
# re-applies addresses, routes and settings. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for netns);
# exits 77 without it, so callers can skip. Needs iproute2 and ethtool.
set -euo pipefail

usage() { echo "usage: $0 up|down|status [PREFIX]   (PREFIX: 1-10 of [a-z0-9], default mp)" >&2; exit 2; }

cmd="${1:-}"
P="${2:-mp}"
[[ "$P" =~ ^[a-z0-9]{1,10}$ ]] || usage
case "$cmd" in up|down|status) ;; *) usage ;; esac

GEN="${P}gen" DUT="${P}dut" SINK="${P}sink"
NAMESPACES=("$GEN" "$DUT" "$SINK")

say() { echo "netns[$P]: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "netns.sh: skipped: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces" >&2
  exit 77
fi
command -v ip >/dev/null || { echo "netns.sh: ip (iproute2) not found: apt-get install iproute2" >&2; exit 1; }

ns_exists() { [ -e "/var/run/netns/$1" ] || ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
link_exists() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }

down() {
  local ns
  for ns in "${NAMESPACES[@]}"; do
    if ns_exists "$ns"; then
      ip netns del "$ns"
      say "deleted namespace $ns (and its veths)"
    fi
  done
}

# veth_pair NS_A IF_A NS_B IF_B: one veth pair with its ends created directly in the two namespaces.
veth_pair() {
  local ns_a="$1" if_a="$2" ns_b="$3" if_b="$4"
  if link_exists "$ns_a" "$if_a" && link_exists "$ns_b" "$if_b"; then
    return
  fi
  # A half-made pair (one end missing) cannot be repaired in place: delete our end and remake it.
  link_exists "$ns_a" "$if_a" && ip -n "$ns_a" link del "$if_a"
  link_exists "$ns_b" "$if_b" && ip -n "$ns_b" link del "$if_b"
  ip -n "$ns_a" link add "$if_a" numrxqueues 2 numtxqueues 2 type veth \
    peer name "$if_b" netns "$ns_b" numrxqueues 2 numtxqueues 2
  say "created veth $ns_a/$if_a <-> $ns_b/$if_b (2 rx, 2 tx queues)"
}

# iface NS IF ADDR4 ADDR6: addresses, checksum offload off, no IPv6 DAD (so IPv6 works at once), up.
iface() {
  local ns="$1" ifc="$2" a4="$3" a6="$4"
  ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifc.accept_dad=0"
  ip -n "$ns" addr replace "$a4" dev "$ifc"
  ip -n "$ns" addr replace "$a6" dev "$ifc" nodad
  ip netns exec "$ns" ethtool -K "$ifc" tx off >/dev/null 2>&1 \
    || { echo "netns.sh: ethtool -K $ifc tx off failed" >&2; exit 1; }
  ip -n "$ns" link set "$ifc" up
  say "$ns/$ifc: $a4 $a6, tx checksum offload off, no DAD, up"
}

# wait_up NS IF: at most 5 s for the interface's operational state to become UP.
wait_up() {
  local i
  for i in $(seq 1 50); do
    ip -n "$1" -o link show dev "$2" | grep -q 'state UP' && return 0
    sleep 0.1
  done
  echo "netns.sh: $1/$2 not operationally up after 5 s" >&2
  exit 1
}

up() {
  command -v ethtool >/dev/null || { echo "netns.sh: ethtool not found: apt-get install ethtool" >&2; exit 1; }
  local ns
  for ns in "${NAMESPACES[@]}"; do
    if ns_exists "$ns"; then
      say "namespace $ns exists"
    else
      if ! ip netns add "$ns" 2>/dev/null; then
        echo "netns.sh: skipped: cannot create network namespace $ns (needs CAP_SYS_ADMIN and netns support)" >&2
        exit 77
      fi
      say "created namespace $ns"
    fi
    ip -n "$ns" link set lo up
  done

  veth_pair "$GEN" "${P}gen0" "$DUT" "${P}dut0"
  veth_pair "$DUT" "${P}dut1" "$SINK" "${P}sink0"

  iface "$GEN" "${P}gen0" 10.77.1.1/24 fd77:1::1/64
  iface "$DUT" "${P}dut0" 10.77.1.2/24 fd77:1::2/64
  iface "$DUT" "${P}dut1" 10.77.2.1/24 fd77:2::1/64
  iface "$SINK" "${P}sink0" 10.77.2.2/24 fd77:2::2/64

  ip -n "$GEN" route replace 10.77.2.0/24 via 10.77.1.2
  ip -n "$GEN" -6 route replace fd77:2::/64 via fd77:1::2
  ip -n "$SINK" route replace 10.77.1.0/24 via 10.77.2.1
  ip -n "$SINK" -6 route replace fd77:1::/64 via fd77:2::1
  say "routes: $GEN -> 10.77.2.0/24, fd77:2::/64 via $DUT; $SINK -> 10.77.1.0/24, fd77:1::/64 via $DUT"

  # The kernel activates a veth (carrier, qdisc) asynchronously, within about a second of `link set
  # up`; until then it drops what it is given. Wait for it, bounded.
  wait_up "$GEN" "${P}gen0"; wait_up "$DUT" "${P}dut0"; wait_up "$DUT" "${P}dut1"; wait_up "$SINK" "${P}sink0"
  say "all four veths are operationally up"

  local fwd="${FORWARD:-0}"
  [[ "$fwd" =~ ^[01]$ ]] || { echo "netns.sh: FORWARD must be 0 or 1" >&2; exit 2; }
  ip netns exec "$DUT" sysctl -qw net.ipv4.ip_forward="$fwd" net.ipv6.conf.all.forwarding="$fwd"
  say "forwarding in $DUT: $fwd"
}

status() {
  local ns
  for ns in "${NAMESPACES[@]}"; do
    if ns_exists "$ns"; then
      echo "== $ns"
      ip -n "$ns" -br addr show
    else
      echo "== $ns: absent"
    fi
  done
}

"$cmd"
