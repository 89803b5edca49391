#!/usr/bin/env bash
# BGP control-plane benchmark, side by side in one run: how fast a node's speaker puts
# routes a peer announces into the kernel, weftd (fabric bgp) against BIRD 2 with its
# kernel protocol (Calico's design). A synthetic GoBGP peer announces N prefixes at once,
# then withdraws them, then announces one; bench/bgpbench times each from the peer's
# announcement to the node's last netlink route event. The speakers take turns, PASSES
# times each; the node's speaker runs pinned to NODE_CPU, the peer to PEER_CPU.
# WEFTD_ARGS adds flags to weftd's command line (e.g. "--log-level info").
# Needs root; makes two network namespaces of its own and removes them. Installs BIRD 2.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
PASSES=${PASSES:-5}
NODE_CPU=${NODE_CPU:-0}
PEER_CPU=${PEER_CPU:-1}
command -v bird >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bird2 >/dev/null
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
go build -o "$d/" ./cmd/weft ./cmd/weftd
go build -o "$d/bgpbench" ./bench/bgpbench
"$d/bgpbench" -n "$N" -passes "$PASSES" -bin "$d" -node-cpu "$NODE_CPU" -peer-cpu "$PEER_CPU" 2> "$d/stderr" || { cat "$d/stderr"; exit 1; }
