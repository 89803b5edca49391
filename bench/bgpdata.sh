#!/usr/bin/env bash
# BGP data path, side by side in one run: pod-to-pod across two racks joined by a router,
# with fabric bgp (a `weft lab --fabric bgp --racks 2`, BIRD 2 as the rack router, routes
# learned over BGP) against
#   static:  the same lab with every BGP route on the nodes and the router replaced by the
#            same route set by hand (the limit: only the routes' origin differs), restored
#            after each pass (the speakers keep running: stopped past their hold time,
#            their sessions would drop);
#   by-hand: the topology built by hand with `ip` and static routes, without weft's node
#            dataplane (nodes, rack bridges, a router, a routed veth to a pod per node).
# Throughput: iperf3, 1 and 4 streams. Latency: sockperf TCP ping-pong (14-byte messages),
# client and server pinned to CPU. Passes alternate between the two; medians and the
# per-pass range of the ratios are shown.
# Needs root and `bin/` built; touches only namespaces it creates (and removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-bin}")
PASSES=${PASSES:-5}
SECS=${SECS:-4}
CPU=${CPU:-1}
T=wb$$
command -v bird >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bird2 >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in /tmp/$T-iperf-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  "$BIN/weft" lab down --name "${T}" >/dev/null 2>&1 || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^${T}h" || true); do ip netns del "$ns"; done
}
trap cleanup EXIT
declare -A CLIENT SERVER DST

"$BIN/weft" lab up -d --name "$T" --nodes 2 --fabric bgp --racks 2 --mode "${MODE:-ptp}" >/dev/null
"$BIN/weft" lab pod add a --node 1 --name "$T" >/dev/null
"$BIN/weft" lab pod add b --node 2 --name "$T" >/dev/null
st=$("$BIN/weft" lab status --name "$T" -o json)
CLIENT[weft-bgp]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pods"][0]["netns"].split("/")[-1])')
SERVER[weft-bgp]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pods"][1]["netns"].split("/")[-1])')
DST[weft-bgp]=$(echo "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pods"][1]["addresses"][0])')
for i in $(seq 100); do # until the routes are learned
  ip netns exec "${CLIENT[weft-bgp]}" ping -c1 -W1 "${DST[weft-bgp]}" >/dev/null 2>&1 && break
  sleep 0.1
done

# by hand: rack r is 192.168.9r.0/24 on bridge brr of an underlay namespace; the router has
# .254 in each; node r has .r and a pod behind a routed veth; every route is static.
n1=${T}hn1 n2=${T}hn2 r=${T}hr a=${T}ha b=${T}hb u=${T}hu
for ns in $n1 $n2 $r $a $b $u; do ip netns add $ns; ip -n $ns link set lo up; done
for i in 1 2; do
  ip -n $u link add br$i type bridge; ip -n $u link set br$i up
  ip link add u$i netns ${T}hn$i type veth peer name p$i netns $u
  ip link add r$i netns $r type veth peer name q$i netns $u
  ip -n $u link set p$i master br$i up; ip -n $u link set q$i master br$i up
  ip -n ${T}hn$i addr add 192.168.9$i.$i/24 dev u$i; ip -n ${T}hn$i link set u$i up
  ip -n $r addr add 192.168.9$i.254/24 dev r$i; ip -n $r link set r$i up
done
ip netns exec $r sysctl -qw net.ipv4.ip_forward=1
ip link add h1 netns $n1 type veth peer name eth0 netns $a
ip link add h2 netns $n2 type veth peer name eth0 netns $b
for x in "$n1 h1 $a 10.93.1 1" "$n2 h2 $b 10.93.2 2"; do
  read -r node dev pod net i <<<"$x"
  ip -n $node link set $dev up; ip -n $pod link set eth0 up
  ip -n $node addr add $net.1/32 dev $dev; ip -n $pod addr add $net.2/32 dev eth0
  ip -n $node route add $net.2/32 dev $dev
  ip -n $pod route add $net.1/32 dev eth0; ip -n $pod route add default via $net.1
  ip netns exec $node sysctl -qw net.ipv4.ip_forward=1
  ip -n $r route add $net.0/24 via 192.168.9$i.$i
done
ip -n $n1 route add 10.93.2.0/24 via 192.168.91.254
ip -n $n2 route add 10.93.1.0/24 via 192.168.92.254
CLIENT[by-hand]=$a; SERVER[by-hand]=$b; DST[by-hand]=10.93.2.2

# static: swap the lab's learned routes (weft: proto 121, BIRD: proto bird) for static
# ones and back.
LAB=$(python3 -c 'import json,sys; s=json.load(open("/run/weft-lab/'$T'/lab.json")); print(" ".join([n["netns"].split("/")[-1] for n in s["nodes"]]+[s["router"].split("/")[-1]]))')
swap() { # swap FROM_PROTO TO_PROTO for every namespace of the lab
  for ns in $LAB; do
    for fam in -4 -6; do
      # single-path routes (the pod blocks); ECMP ones (the service range every node
      # announces) carry no test traffic and stay as they are
      { ip $fam -n $ns route show proto "$1" | grep ' via ' | grep -v '^\s' || true; } | while read -r line; do
        line=${line%% metric*}; line=${line%% proto *}
        # shellcheck disable=SC2086
        ip $fam -n $ns route replace $line proto "$2"
      done
    done
  done
}
static_on() { swap 121 static; swap bird boot; }
static_off() { swap static 121; swap boot bird; }
CLIENT[static]=${CLIENT[weft-bgp]}; SERVER[static]=${SERVER[weft-bgp]}; DST[static]=${DST[weft-bgp]}

SETUPS="by-hand static weft-bgp"
for s in by-hand weft-bgp; do
  ip netns exec "${SERVER[$s]}" iperf3 -s -D -B "${DST[$s]}" --pidfile "/tmp/$T-iperf-$s.pid" >/dev/null
  ip netns exec "${SERVER[$s]}" taskset -c $CPU sockperf server --tcp -i "${DST[$s]}" -p 11111 >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1
declare -A T1 T4 P50
for pass in $(seq "$PASSES"); do
  for s in $SETUPS; do
    [ $s = static ] && static_on
    bps() { ip netns exec "${CLIENT[$s]}" iperf3 -c "${DST[$s]}" -t "$SECS" -P "$1" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'; }
    T1[$s]+="$(bps 1) "
    T4[$s]+="$(bps 4) "
    out=$(ip netns exec "${CLIENT[$s]}" taskset -c $CPU sockperf ping-pong --tcp -i "${DST[$s]}" -p 11111 -m 14 -t "$SECS" 2>&1)
    P50[$s]+="$(echo "$out" | awk '/percentile 50.000/{print $NF}') "
    [ $s = static ] && static_off
  done
done
python3 - "$SETUPS" "$(declare -p T1 T4 P50)" <<'PY'
import sys, re, statistics
setups = sys.argv[1].split(); decl = sys.argv[2]
def arr(name):
    m = re.search(r'declare -A %s=\((.*?)\)\n?' % name, decl + "\n", re.S)
    return {k: [float(x) for x in v.split()] for k, v in re.findall(r'\[([^\]]+)\]="([^"]*)"', m.group(1))}
t1, t4, p50 = arr("T1"), arr("T4"), arr("P50")
med = statistics.median
print("pod-to-pod across two racks: median of %d alternating passes" % len(t1["by-hand"]))
print("%-10s %10s %10s %10s" % ("setup", "1 stream", "4 streams", "rr p50 µs"))
for s in setups:
    print("%-10s %9.2fG %9.2fG %10.2f" % (s, med(t1[s])/1e9, med(t4[s])/1e9, med(p50[s])))
def ratio(d, base):
    rs = [w/h for w, h in zip(d["weft-bgp"], d[base])]
    return "%.2fx (%.2f-%.2f)" % (med(d["weft-bgp"])/med(d[base]), min(rs), max(rs))
print()
for base in ("static", "by-hand"):
    print("weft-bgp / %-8s 1 stream %s, 4 streams %s, rr p50 %s" % (base + ":", ratio(t1, base), ratio(t4, base), ratio(p50, base)))
PY
