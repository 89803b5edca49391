#!/usr/bin/env bash
# Cross-node pod-to-pod benchmark, side by side in one run:
#   the underlay itself (node namespace to node namespace), weft vxlan and weft direct
#   (each a 2-node `weft lab`), and the same kernel objects built by hand with `ip`:
#   host-gw routes and a flannel-style VXLAN.
# Throughput: iperf3, 1 and 4 streams. Latency: sockperf TCP ping-pong (14-byte messages),
# client and server pinned to the same CPU. Passes alternate between setups; medians shown.
# Needs root and `bin/` built; touches only namespaces it creates (and removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-bin}")
PASSES=${PASSES:-3}
SECS=${SECS:-4}
CPU=${CPU:-1}
T=wx$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in /tmp/$T-iperf-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  "$BIN/weft" lab down --name "${T}v" >/dev/null 2>&1 || true
  "$BIN/weft" lab down --name "${T}d" >/dev/null 2>&1 || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$T" || true); do ip netns del "$ns"; done
}
trap cleanup EXIT
declare -A CLIENT SERVER DST

# weft, through the lab (2 nodes, one pod each)
for f in vxlan direct; do
  name=${T}${f:0:1}
  "$BIN/weft" lab up -d --name "$name" --nodes 2 --fabric $f --mode "${MODE:-ptp}" >/dev/null
  "$BIN/weft" lab pod add a --node 1 --name "$name" >/dev/null
  "$BIN/weft" lab pod add b --node 2 --name "$name" >/dev/null
  st=$("$BIN/weft" lab status --name "$name" -o json)
  CLIENT[weft-$f]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pods"][0]["netns"].split("/")[-1])')
  SERVER[weft-$f]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pods"][1]["netns"].split("/")[-1])')
  DST[weft-$f]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pods"][1]["addresses"][0])')
  if [ $f = vxlan ]; then # the underlay itself: node namespace to node namespace
    CLIENT[underlay]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["netns"].split("/")[-1])')
    SERVER[underlay]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][1]["netns"].split("/")[-1])')
    DST[underlay]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][1]["underlay"])')
  fi
done

# hand-built peers on the lab's topology: two nodes whose uplinks are ports of a bridge in
# an underlay namespace, a routed veth to a pod on each
handbuilt() { # handbuilt KIND NET(third octet) LABEL
  local k=$1 o=$2 label=$3 n1=$T$1n1 n2=$T$1n2 a=$T$1a b=$T$1b u=$T$1u
  for ns in $n1 $n2 $a $b $u; do ip netns add $ns; ip -n $ns link set lo up; done
  ip -n $u link add br0 type bridge; ip -n $u link set br0 up
  for i in 1 2; do
    ip link add u$i netns $T${k}n$i type veth peer name p$i netns $u
    ip -n $u link set p$i master br0 up
    ip -n $T${k}n$i addr add 192.168.$o.$i/24 dev u$i; ip -n $T${k}n$i link set u$i up
  done
  ip link add h1 netns $n1 type veth peer name eth0 netns $a
  ip link add h2 netns $n2 type veth peer name eth0 netns $b
  local mtu=1500; [ $k = fl ] && mtu=1450
  local node dev pod net
  for x in "$n1 h1 $a 10.$o.1" "$n2 h2 $b 10.$o.2"; do
    read -r node dev pod net <<<"$x"
    ip -n $node link set $dev mtu $mtu up; ip -n $pod link set eth0 mtu $mtu up
    ip -n $node addr add $net.1/32 dev $dev; ip -n $pod addr add $net.2/32 dev eth0
    ip -n $node route add $net.2/32 dev $dev
    ip -n $pod route add $net.1/32 dev eth0; ip -n $pod route add default via $net.1
    ip netns exec $node sysctl -qw net.ipv4.ip_forward=1
  done
  if [ $k = hg ]; then
    ip -n $n1 route add 10.$o.2.0/24 via 192.168.$o.2; ip -n $n2 route add 10.$o.1.0/24 via 192.168.$o.1
  else # flannel-style: VXLAN, static FDB + neighbour, onlink routes
    for i in 1 2; do
      local peer=$((3-i)) ns=$T${k}n$i
      ip -n $ns link add flannel.1 type vxlan id 1 local 192.168.$o.$i dev u$i dstport 4789 nolearning
      ip -n $ns link set flannel.1 address 02:00:00:00:$o:0$i mtu 1450 up
      ip -n $ns addr add 10.$o.$i.0/32 dev flannel.1
      ip -n $ns route add 10.$o.$peer.0/24 via 10.$o.$peer.0 dev flannel.1 onlink
      ip -n $ns neigh add 10.$o.$peer.0 lladdr 02:00:00:00:$o:0$peer dev flannel.1 nud permanent
      bridge -n $ns fdb append 02:00:00:00:$o:0$peer dev flannel.1 dst 192.168.$o.$peer
    done
  fi
  CLIENT[$label]=$a; SERVER[$label]=$b; DST[$label]=10.$o.2.2
}
handbuilt hg 91 hostgw
handbuilt fl 92 flannel

SETUPS="underlay hostgw weft-direct flannel weft-vxlan"
for s in $SETUPS; do
  ip netns exec "${SERVER[$s]}" iperf3 -s -D -B "${DST[$s]}" --pidfile "/tmp/$T-iperf-$s.pid" >/dev/null
  ip netns exec "${SERVER[$s]}" taskset -c $CPU sockperf server --tcp -i "${DST[$s]}" -p 11111 >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1
declare -A T1 T4 P50
for pass in $(seq "$PASSES"); do
  for s in $SETUPS; do
    bps() { ip netns exec "${CLIENT[$s]}" iperf3 -c "${DST[$s]}" -t "$SECS" -P "$1" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'; }
    T1[$s]+="$(bps 1) "
    T4[$s]+="$(bps 4) "
    out=$(ip netns exec "${CLIENT[$s]}" taskset -c $CPU sockperf ping-pong --tcp -i "${DST[$s]}" -p 11111 -m 14 -t "$SECS" 2>&1)
    P50[$s]+="$(echo "$out" | awk '/percentile 50.000/{print $NF}') "
  done
done
for s in $SETUPS; do kill "$(cat /tmp/$T-iperf-$s.pid)" 2>/dev/null || true; rm -f /tmp/$T-iperf-$s.pid; done
python3 - "$SETUPS" "$(declare -p T1 T4 P50)" <<'PY'
import sys, re, statistics
setups = sys.argv[1].split(); decl = sys.argv[2]
def arr(name):
    m = re.search(r'declare -A %s=\((.*?)\)\n?' % name, decl + "\n", re.S)
    return {k: [float(x) for x in v.split()] for k, v in re.findall(r'\[([^\]]+)\]="([^"]*)"', m.group(1))}
t1, t4, p50 = arr("T1"), arr("T4"), arr("P50")
med = statistics.median
print("pod-to-pod across two nodes: median of %d alternating passes" % len(t1["underlay"]))
print("%-12s %10s %10s %10s %10s" % ("setup", "1 stream", "4 streams", "rr p50 µs", "vs underlay"))
for s in setups:
    print("%-12s %9.2fG %9.2fG %10.2f %9.2fx" % (s, med(t1[s])/1e9, med(t4[s])/1e9, med(p50[s]), med(t1[s])/med(t1["underlay"])))
print()
print("weft-direct vs hand-built host-gw: throughput %.2fx, rr p50 %.2fx" % (med(t1["weft-direct"])/med(t1["hostgw"]), med(p50["weft-direct"])/med(p50["hostgw"])))
print("weft-vxlan vs flannel-style VXLAN: throughput %.2fx, rr p50 %.2fx" % (med(t1["weft-vxlan"])/med(t1["flannel"]), med(p50["weft-vxlan"])/med(p50["flannel"])))
PY
