#!/usr/bin/env bash
# Service proxy benchmark, side by side in one run (bench/svcbench): weft's nftables proxy
# against the rule shapes kube-proxy loads (nftables mode via `nft -f`, iptables mode via
# iptables-restore with the legacy and nf_tables backends), on the same namespaces:
# full programming of N services x 5 endpoints, one endpoint change at N, and
# new-connection latency (connect, 1-byte echo, close) through a VIP and to the backend
# directly, against no rules. The whole run is pinned to one CPU; PASSES runs repeat it.
# Needs root and the Debian packages nftables and iptables; touches only namespaces it
# creates.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${PASSES:-1}
CPU=${CPU:-1}
SIZES=${SIZES:-10,1000,10000}
CONNS=${CONNS:-2000}
SHAPES=${SHAPES:-weft,nft,iptables-legacy,iptables-nft}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/svcbench" ./bench/svcbench
for p in $(seq 1 "$PASSES"); do
  echo "== pass $p of $PASSES (CPU $CPU)"
  taskset -c "$CPU" "$bin/svcbench" -sizes "$SIZES" -conns "$CONNS" -shapes "$SHAPES" ${EXTRA:-}
done
