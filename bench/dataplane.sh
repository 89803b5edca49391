#!/usr/bin/env bash
# Pod-to-pod dataplane benchmark, measured side by side in one run:
#   bare veth pair between two namespaces (the limit), weft bridge, weft ptp, and the
#   reference bridge + host-local plugins (Debian's containernetworking-plugins).
# Throughput: iperf3, 1 TCP stream. Latency: sockperf TCP ping-pong with 14-byte messages
# (sockperf's minimum), client and server pinned to the same CPU, p50 and p99.
# Passes alternate between setups; the median pass is reported. Needs root; touches only
# namespaces it creates (prefix wdp<pid>-) and removes them on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PASSES=${PASSES:-3}
SECS=${SECS:-4}
CPU=${CPU:-1}
T=wdp$$
TMP=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$TMP"/iperf-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  wait 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$T-" || true); do ip netns del "$ns"; done
  # weftd leaves its bpffs mounted (its pinned programs outlive a restart): unmount it.
  for m in "$TMP"/*/run/bpf; do if mountpoint -q "$m"; then umount "$m"; fi; done
  rm -rf "$TMP"
}
trap cleanup EXIT
mkns() { ip netns add "$T-$1"; ip -n "$T-$1" link set lo up; }

cni() { # cni NODE PLUGIN CONF CMD ID POD -> result on stdout
  local node=$1 plugin=$2 conf=$3 cmd=$4 id=$5 pod=$6
  echo "$conf" | CNI_COMMAND=$cmd CNI_CONTAINERID=$id CNI_NETNS=/run/netns/$T-$pod CNI_IFNAME=eth0 \
    CNI_PATH=$(realpath "$BIN"):/usr/lib/cni nsenter --net=/run/netns/$T-$node "$plugin"
}
first_ip() { python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'; }

# 1. bare veth
mkns va; mkns vb
ip link add "$T-a" netns "$T-va" type veth peer name "$T-b" netns "$T-vb"
ip -n "$T-va" addr add 10.50.0.1/24 dev "$T-a"; ip -n "$T-va" link set "$T-a" up
ip -n "$T-vb" addr add 10.50.0.2/24 dev "$T-b"; ip -n "$T-vb" link set "$T-b" up
declare -A CLIENT SERVER DST
CLIENT[veth]=va; SERVER[veth]=vb; DST[veth]=10.50.0.2

# 2./3. weft bridge and ptp, and weft bridge without the eBPF fast path: one weftd per node
for setup in bridge ptp bridge-nofp; do
  node=w${setup//-/}; mkns $node
  mode=${setup%-nofp}; fp=true
  case $setup in bridge) cidr=10.51.0.0/24;; ptp) cidr=10.52.0.0/24;; bridge-nofp) cidr=10.54.0.0/24; fp=false;; esac
  nsenter --net=/run/netns/$T-$node "$BIN/weftd" --state-dir "$TMP/$node/state" --run-dir "$TMP/$node/run" \
    --pod-cidr $cidr --log-level error --fastpath=$fp &
  pids+=($!)
  for i in $(seq 100); do [ -e "$TMP/$node/run/node.json" ] && break; sleep 0.05; done
  conf="{\"cniVersion\":\"1.1.0\",\"name\":\"bench\",\"type\":\"weft-cni\",\"mode\":\"$mode\",\"socket\":\"$TMP/$node/run/weft.sock\"}"
  mkns ${node}a; mkns ${node}b
  cni $node "$BIN/weft-cni" "$conf" ADD a ${node}a >/dev/null
  DST[weft-$setup]=$(cni $node "$BIN/weft-cni" "$conf" ADD b ${node}b | first_ip)
  CLIENT[weft-$setup]=${node}a; SERVER[weft-$setup]=${node}b
done

# 4. reference bridge + host-local
mkns ref; mkns refa; mkns refb
rconf="{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"bridge\",\"bridge\":\"refbr0\",\"isGateway\":true,\"hairpinMode\":true,\"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$TMP/hl\",\"ranges\":[[{\"subnet\":\"10.53.0.0/24\"}]],\"routes\":[{\"dst\":\"0.0.0.0/0\"}]}}"
cni ref /usr/lib/cni/bridge "$rconf" ADD a refa >/dev/null
DST[ref-bridge]=$(cni ref /usr/lib/cni/bridge "$rconf" ADD b refb | first_ip)
CLIENT[ref-bridge]=refa; SERVER[ref-bridge]=refb

sleep 0.5 # let weftd attach the fast path to the new veths
SETUPS="veth weft-bridge weft-ptp weft-bridge-nofp ref-bridge"
declare -A TPUT P50 P99
for s in $SETUPS; do
  ip netns exec "$T-${SERVER[$s]}" iperf3 -s -D -B "${DST[$s]}" --pidfile "$TMP/iperf-$s.pid" >/dev/null
  ip netns exec "$T-${SERVER[$s]}" taskset -c $CPU sockperf server --tcp -i "${DST[$s]}" -p 11111 >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1
for pass in $(seq "$PASSES"); do
  for s in $SETUPS; do
    bps=$(ip netns exec "$T-${CLIENT[$s]}" iperf3 -c "${DST[$s]}" -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
    TPUT[$s]+="$bps "
    out=$(ip netns exec "$T-${CLIENT[$s]}" taskset -c $CPU sockperf ping-pong --tcp -i "${DST[$s]}" -p 11111 -m 14 -t "$SECS" 2>&1)
    P50[$s]+="$(echo "$out" | awk '/percentile 50.000/{print $NF}') "
    P99[$s]+="$(echo "$out" | awk '/percentile 99.000/{print $NF}') "
  done
done
for s in $SETUPS; do kill "$(cat "$TMP/iperf-$s.pid")" 2>/dev/null || true; done

python3 - "$SETUPS" "$(declare -p TPUT P50 P99)" <<'PY'
import sys, re, statistics
setups = sys.argv[1].split()
decl = sys.argv[2]
def arr(name):
    m = re.search(r'declare -A %s=\((.*?)\)\n?' % name, decl + "\n", re.S)
    out = {}
    for k, v in re.findall(r'\[([^\]]+)\]="([^"]*)"', m.group(1)):
        out[k] = [float(x) for x in v.split()]
    return out
tput, p50, p99 = arr("TPUT"), arr("P50"), arr("P99")
med = lambda xs: statistics.median(xs)
base_t, base_l = med(tput["veth"]), med(p50["veth"])
print("pod-to-pod, one node: median of %d alternating passes" % len(tput["veth"]))
print("%-17s %12s %9s %12s %12s %9s" % ("setup", "Gbit/s", "vs veth", "rr p50 µs", "rr p99 µs", "vs veth"))
for s in setups:
    t, l, l99 = med(tput[s]) / 1e9, med(p50[s]), med(p99[s])
    print("%-17s %12.2f %8.2fx %12.2f %12.2f %8.2fx" % (s, t, med(tput[s]) / base_t, l, l99, l / base_l))
PY
