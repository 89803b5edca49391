#!/usr/bin/env bash
# Network policy benchmark, side by side in one run (bench/policybench): a server pod
# selected by N policies (1, 100, 1,000; and 0: 1,000 policies selecting a neighbour of the
# server instead), enforced by weft (compiled rules in nftables: verdict maps and interval
# sets) and in the iptables + ipset shape of Calico and kube-router (a set and a chain per
# policy, jumped to in turn), against the same topology with weft and no policy, with
# conntrack only and with nothing. Prints the time to program the N policies and
# new-connection p50/p99 (connect, one byte each way, close), taken in interleaved rounds.
# The whole run is pinned to one CPU (CPU). Needs root; installs ipset and iptables.
set -euo pipefail
cd "$(dirname "$0")/.."
CPU=${CPU:-1}
SIZES=${SIZES:-0,1,100,1000}
CONNS=${CONNS:-2000}
missing=()
command -v ipset >/dev/null || missing+=(ipset)
command -v iptables-legacy-restore >/dev/null || missing+=(iptables)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
go build -o "$d/policybench" ./bench/policybench
taskset -c "$CPU" "$d/policybench" -sizes "$SIZES" -conns "$CONNS"
