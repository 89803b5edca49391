#!/usr/bin/env bash
# DNS benchmark, side by side in one run: weft's node DNS server (bench/dnsbench, the same
# dns.Server weftd runs) against BIND 9 (authoritative zone file) and CoreDNS (file
# plugin) on the same N service names, with dnsperf. Also the cache-hit path for
# forwarded names: weft and CoreDNS (forward + cache) in front of BIND.
# Every server gets one thread (GOMAXPROCS=1, named -n 1) pinned to SERVER_CPU; dnsperf
# runs pinned to CLIENT_CPU. QPS comes from an unthrottled run; p50/p99 from ROUNDS rounds
# in which the servers take turns for a second each at RATE queries/s, so latency is
# compared at the same load and the same moments. PASSES repeats the whole set.
# Runs in a network namespace of its own (unshare), on its loopback; needs root. Installs
# dnsperf and bind9 (Debian) and builds CoreDNS from its Go module when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
PASSES=${PASSES:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RATE=${RATE:-10000}
ROUNDS=${ROUNDS:-10}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
COREDNS_VERSION=v1.15.0

if [ "${WEFT_DNS_BENCH_NS:-}" != 1 ]; then
  missing=()
  command -v dnsperf >/dev/null || missing+=(dnsperf)
  command -v named >/dev/null || missing+=(bind9)
  command -v ip >/dev/null || missing+=(iproute2)
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
  coredns_dir="$(go env GOPATH)/weft-coredns-$COREDNS_VERSION"
  if [ ! -x "$coredns_dir/coredns" ]; then
    echo "building CoreDNS $COREDNS_VERSION (about 2 minutes)"
    GOBIN="$coredns_dir" go install "github.com/coredns/coredns@$COREDNS_VERSION"
  fi
  exec unshare --net --fork env WEFT_DNS_BENCH_NS=1 COREDNS="$coredns_dir/coredns" "$0" "$@"
fi

ip link set lo up
d=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$d"
}
trap cleanup EXIT
go build -o "$d/dnsbench" ./bench/dnsbench
"$d/dnsbench" -n "$N" -zone "$d/zone" -queries "$d/queries" -external example.net

cat >"$d/named.conf" <<CONF
options {
  directory "$d"; pid-file "$d/named.pid"; session-keyfile "$d/session.key";
  listen-on port 5302 { 127.0.0.1; }; listen-on-v6 { none; };
  recursion no; dnssec-validation no;
};
controls { };
zone "cluster.local" { type primary; file "$d/zone"; };
zone "example.net" { type primary; file "$d/zone.ext"; };
CONF
cat >"$d/Corefile" <<CONF
cluster.local:5303 {
  bind 127.0.0.1
  file $d/zone
}
example.net:5303 {
  bind 127.0.0.1
  forward . 127.0.0.1:5302
  cache 300
}
CONF

GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$d/dnsbench" -n "$N" -serve 127.0.0.1:5301 -upstream 127.0.0.1:5302 2>"$d/weft.log" & pids+=($!)
taskset -c "$SERVER_CPU" named -g -n 1 -c "$d/named.conf" >"$d/named.log" 2>&1 & pids+=($!)
(cd "$d" && GOMAXPROCS=1 exec taskset -c "$SERVER_CPU" "$COREDNS" -conf "$d/Corefile" >"$d/coredns.log" 2>&1) & pids+=($!)

# ready: each answers one of the names
for port in 5301 5302 5303; do
  for _ in $(seq 1 100); do
    if echo "svc-0.ns-0.svc.cluster.local A" | dnsperf -s 127.0.0.1 -p "$port" -n 1 -t 1 2>/dev/null | grep -q "Queries completed:.*1 "; then continue 2; fi
    sleep 0.1
  done
  echo "server on port $port did not start"; cat "$d"/*.log; exit 1
done

# qps PORT QUERYFILE: unthrottled queries per second
qps() {
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$1" -d "$2" -c 4 -T 1 -q 100 -l "$SECONDS_PER_RUN" 2>/dev/null |
    awk '/Queries per second/ {printf "%.0f", $4}'
}
# lat QUERYFILE: "p50 p99" in microseconds for each of weft, BIND and CoreDNS at RATE
# queries/s. The servers take turns, one second each, for ROUNDS rounds, so a noisy moment
# of the machine lands on all three; dnsperf -v lists each reply's latency.
lat() {
  rm -f "$d"/lat.*
  for _ in $(seq 1 "$ROUNDS"); do
    for port in 5301 5302 5303; do
      taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$1" -c 4 -T 1 -q 100 -Q "$RATE" -l 1 -v 2>/dev/null |
        awk '$1 == ">" && $2 == "NOERROR" {print $NF * 1e6}' >>"$d/lat.$port"
    done
  done
  for port in 5301 5302 5303; do
    sort -n "$d/lat.$port" | awk '{v[NR]=$1} END {if (NR == 0) {print "- -"; exit} printf "%.0f %.0f\n", v[int(NR*0.5)+1], v[int(NR*0.99)+1]}'
  done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) print a / b; else print 0}'; }

# warm every cache (weft and CoreDNS fill theirs from BIND on the forwarded names)
for port in 5301 5302 5303; do for q in queries queries.ext; do
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$d/$q" -c 4 -T 1 -q 100 -l 2 >/dev/null 2>&1
done; done

echo "# $N names; servers: 1 thread on CPU $SERVER_CPU; dnsperf -c 4 -T 1 -q 100 on CPU $CLIENT_CPU; ${SECONDS_PER_RUN}s per QPS run, latency at $RATE q/s in $ROUNDS interleaved rounds"
printf "%-5s %-28s %9s %9s %9s %8s %8s\n" pass path weft bind coredns weft/bind weft/core
for p in $(seq 1 "$PASSES"); do
  for q in queries queries.ext; do
    path="cluster names (authoritative)"; [ "$q" = queries.ext ] && path="forwarded names (cache hit)"
    w=$(qps 5301 "$d/$q"); b=$(qps 5302 "$d/$q"); c=$(qps 5303 "$d/$q")
    printf "%-5s %-28s %9s %9s %9s %8.2f %8.2f\n" "$p" "$path qps" "$w" "$b" "$c" "$(ratio "$w" "$b")" "$(ratio "$w" "$c")"
    { read -r w50 w99; read -r b50 b99; read -r c50 c99; } < <(lat "$d/$q")
    printf "%-5s %-28s %9s %9s %9s\n" "$p" "  p50 us" "$w50" "$b50" "$c50"
    printf "%-5s %-28s %9s %9s %9s %8.2f %8.2f\n" "$p" "  p99 us" "$w99" "$b99" "$c99" "$(ratio "$w99" "$b99")" "$(ratio "$w99" "$c99")"
  done
done
