#!/usr/bin/env bash
# Ingress benchmark, side by side in one run: weft-ingress against nginx, HAProxy and Caddy
# (Debian), each a reverse proxy to the same backend (an nginx worker answering 100
# bytes) with upstream keep-alive, on the loopback of a network namespace of its own.
#   keep-alive: wrk -t2 -c64, HTTP/1.1 keep-alive: req/s, p99, CPU µs per request (the
#               proxy's processes: utime+stime over the run / requests)
#   new conn:   wrk -c64 with "Connection: close": a TCP connection per request
#   TLS new:    the same over TLS: a full handshake per request
#   h2:         h2load -c64 -m10 over TLS with ALPN h2 (CONNS sets the 64 everywhere)
# The keep-alive test also runs nginx-pinned: the same nginx with worker_cpu_affinity auto,
# its workers each kept to a CPU as weft-ingress's are by default (--cpu-affinity auto).
# Proxies take turns per test, PASSES times; the summary is the median ratio weft/peer and
# its spread. Machines here are noisy: compare ratios of one run, not absolute numbers.
# The backend and the load generator are not pinned: they share the 2 cores with the proxy,
# as they did for the figures the issue quotes. Only the proxies' own option pins anything
# (weft-ingress's default, nginx-pinned's worker_cpu_affinity).
# SESSIONS says how the kernel's scheduler groups them (autogroup: one group per session):
#   shared (default): every process in this script's session, so each thread competes
#                     with every other on equal terms;
#   own:              each server (backend, every proxy) in a session of its own, as
#                     services each in their own cgroup; the load generator in this one.
# Both treat every proxy alike; an nginx left to daemonize would get a session of its own
# while the others share the load generator's, which favours it.
# Needs root (unshare); installs wrk, nghttp2-client, nginx, haproxy, caddy when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${PASSES:-3}
T=${T:-5}        # seconds per wrk/h2load run
WARMUP=${WARMUP:-1}
TESTS=${TESTS:-keepalive newconn tlsnew h2}
CONNS=${CONNS:-64}  # connections of wrk and h2load
SESSIONS=${SESSIONS:-shared}
WEFT_ARGS=${WEFT_ARGS:-}  # extra weft-ingress flags, e.g. "--workers 2" to compare worker counts
# REFERENCE=1 adds bench/minproxy to the keep-alive test: the least a Go proxy does per
# request, the floor under weft's figures (MINPROXY_ARGS, e.g. "-spin 1us", adds CPU time).
REFERENCE=${REFERENCE:-}
MINPROXY_ARGS=${MINPROXY_ARGS:-}
case $SESSIONS in shared|own) ;; *) echo "SESSIONS is shared or own" >&2; exit 2 ;; esac

if [ "${WEFT_INGRESS_BENCH_NS:-}" != 1 ]; then
  missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v caddy >/dev/null || missing+=(caddy)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v ip >/dev/null || missing+=(iproute2)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  exec unshare --net --fork env WEFT_INGRESS_BENCH_NS=1 "$0" "$@"
fi

ip link set lo up
d=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sleep 0.3
  rm -rf "$d"
}
trap cleanup EXIT
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$d/" ./cmd/weft ./cmd/weft-ingress ./bench/minproxy
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
cat "$d/cert.pem" "$d/key.pem" >"$d/both.pem"
body=$(printf '%0100d' 0)
# launch runs a server in the foreground of the caller (which backgrounds it), in a
# session of its own with SESSIONS=own.
launch() { if [ "$SESSIONS" = own ]; then exec setsid "$@"; else exec "$@"; fi; }
temps() { for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $d/$1-$t;"; done; }

# The backend: one nginx worker, 100 bytes per answer.
cat >"$d/be.conf" <<CONF
worker_processes 1; pid $d/be.pid; error_log $d/be.err;
events { worker_connections 8192; }
http {
  access_log off;
$(temps be)
  server { listen 127.0.0.1:8081 backlog=4096; keepalive_requests 10000000; location / { return 200 "$body"; } }
}
CONF
(launch nginx -c "$d/be.conf" -g 'daemon off;') &
pids+=($!)

cat >"$d/ng.conf" <<CONF
worker_processes 2; pid $d/ng.pid; error_log $d/ng.err;
events { worker_connections 8192; }
http {
  access_log off;
$(temps ng)
  upstream be { server 127.0.0.1:8081; keepalive 128; }
  server {
    listen 127.0.0.1:8082 backlog=4096; listen 127.0.0.1:8442 ssl http2 backlog=4096;
    ssl_certificate $d/cert.pem; ssl_certificate_key $d/key.pem;
    keepalive_requests 10000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
(launch nginx -c "$d/ng.conf" -g 'daemon off;') &
pids+=($!)
# The same nginx with each worker kept to a CPU of its own (worker_cpu_affinity auto), as
# weft-ingress's workers are by default: keep-alive only.
sed -e 's/^worker_processes 2;/worker_processes 2; worker_cpu_affinity auto;/' -e 's/:8082 /:8086 /' \
  -e 's/ listen 127.0.0.1:8442 ssl http2 backlog=4096;//' -e "s|$d/ng.pid|$d/ngpin.pid|" -e "s|$d/ng-|$d/ngpin-|g" \
  "$d/ng.conf" >"$d/ngpin.conf"
(launch nginx -c "$d/ngpin.conf" -g 'daemon off;') &
pids+=($!)

cat >"$d/ha.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:8083
  bind 127.0.0.1:8443 ssl crt $d/both.pem alpn h2,http/1.1
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:8081
CONF
(launch haproxy -f "$d/ha.cfg" -db) >"$d/ha.log" 2>&1 &
pids+=($!); ha_pid=$!

cat >"$d/Caddyfile" <<CONF
{
  admin off
  auto_https off
  default_sni 127.0.0.1
}
http://127.0.0.1:8084 {
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:8081
}
https://127.0.0.1:8444 {
  bind 127.0.0.1
  tls $d/cert.pem $d/key.pem
  reverse_proxy 127.0.0.1:8081
}
CONF
(launch env HOME="$d" XDG_DATA_HOME="$d" XDG_CONFIG_HOME="$d" caddy run --config "$d/Caddyfile" --adapter caddyfile) >"$d/caddy.log" 2>&1 &
pids+=($!); caddy_pid=$!

store="bolt://$d/store.db"
"$d/weft" cluster init --store "$store" --cluster-cidr 10.200.0.0/16 --service-cidr 10.201.0.0/16 >/dev/null
"$d/weft" service create be --port 80:8081/tcp --endpoint 127.0.0.1:8081 --store "$store" >/dev/null
cat >"$d/ingress.yaml" <<CONF
apiVersion: weft/v1
kind: Ingress
metadata: {name: bench}
spec:
  hosts:
  - routes: [{path: /, backends: [{service: be, port: 80}]}]
  tls: [{certificate: bench}]
CONF
"$d/weft" apply -f "$d/ingress.yaml" --store "$store" >/dev/null
"$d/weft" ingress cert add bench --cert "$d/cert.pem" --key "$d/key.pem" --store "$store" >/dev/null
(launch "$d/weft-ingress" --store "$store" --http 127.0.0.1:8085 --https 127.0.0.1:8445 --metrics-addr 127.0.0.1:9480 --access-log=false $WEFT_ARGS) >"$d/weft.log" 2>&1 &
pids+=($!); weft_pid=$!
if [ -n "$REFERENCE" ]; then
  (launch "$d/minproxy" -listen 127.0.0.1:8087 -upstream 127.0.0.1:8081 $MINPROXY_ARGS) >"$d/minproxy.log" 2>&1 &
  pids+=($!); minproxy_pid=$!
fi

for port in 8082 8083 8084 8085 8086 8442 8443 8444 8445 ${REFERENCE:+8087}; do
  scheme=http; [ "$port" -ge 8442 ] && scheme=https
  for i in $(seq 101); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' "$scheme://127.0.0.1:$port/")" = 200 ] && break
    if [ "$i" = 101 ]; then
      echo "nothing answers on $scheme://127.0.0.1:$port/" >&2
      tail -n 5 "$d"/*.log "$d"/*.err >&2 || true
      exit 1
    fi
    sleep 0.1
  done
done

declare -A PORT=([minproxy]=8087 [weft]=8085 [nginx]=8082 [nginx-pinned]=8086 [haproxy]=8083 [caddy]=8084)
declare -A TLSPORT=([minproxy]=- [nginx-pinned]=- [weft]=8445 [nginx]=8442 [haproxy]=8443 [caddy]=8444)
proxies=(weft nginx nginx-pinned haproxy caddy)
[ -n "$REFERENCE" ] && proxies+=(minproxy)
children() { cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$1" '$4==p{print $1}' | tr '\n' ' '; }
procs() { # the proxy's processes: a master and its workers for weft and nginx
  case $1 in
    weft) echo "$weft_pid $(children "$weft_pid")" ;;
    nginx) local m; m=$(cat "$d/ng.pid"); echo "$m $(children "$m")" ;;
    nginx-pinned) local m; m=$(cat "$d/ngpin.pid"); echo "$m $(children "$m")" ;;
    haproxy) echo "$ha_pid" ;;
    caddy) echo "$caddy_pid" ;;
    minproxy) echo "$minproxy_pid $(children "$minproxy_pid")" ;;
  esac
}
# split: how the proxy's accepted connections on port $1 are spread over its processes
# (each worker's share decides its queue, so the tail), largest first, e.g. "36/28".
split() {
  ss -Htnp state established "( sport = :$1 )" 2>/dev/null | grep -o 'pid=[0-9]*' | sort | uniq -c |
    awk '{print $1}' | sort -rn | paste -sd/ -
}
ticks() { local t=0 p; for p in $1; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
# switches: the proxy's context switches so far, all threads: "voluntary involuntary".
switches() {
  local p
  for p in $1; do cat /proc/"$p"/task/*/status 2>/dev/null; done |
    awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v+0, n+0}'
}
hz=$(getconf CLK_TCK)
ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else if (v ~ /s$/) printf "%.3f", v*1000; else print v }'; }

results=$d/results
: >"$results"
for pass in $(seq "$PASSES"); do
  for test in $TESTS; do
    # The order rotates each pass, so no proxy always runs first (or right after another).
    order=("${proxies[@]:$(( (pass - 1) % ${#proxies[@]} ))}" "${proxies[@]:0:$(( (pass - 1) % ${#proxies[@]} ))}")
    for p in "${order[@]}"; do
      case $p in minproxy|nginx-pinned) [ "$test" != keepalive ] && continue ;; esac # keep-alive only
      url="http://127.0.0.1:${PORT[$p]}/"
      tls_url="https://127.0.0.1:${TLSPORT[$p]}/"
      case $test in
        keepalive)
          wrk -t2 -c"$CONNS" -d"$WARMUP"s "$url" >/dev/null
          before=$(ticks "$(procs $p)"); sw_before=$(switches "$(procs $p)")
          wrk -t2 -c"$CONNS" -d"$T"s --latency "$url" >"$d/wrk.out" &
          sleep 1
          spread=$(split "${PORT[$p]}")
          wait $!
          out=$(cat "$d/wrk.out")
          after=$(ticks "$(procs $p)"); sw_after=$(switches "$(procs $p)")
          reqs=$(awk '/requests in/{print $1}' <<<"$out")
          # context switches per request, voluntary/involuntary (sleeps / preemptions)
          cs=$(awk -v a="$sw_before" -v b="$sw_after" -v n="$reqs" 'BEGIN{split(a,x," "); split(b,y," "); printf "%.2f/%.2f", (y[1]-x[1])/n, (y[2]-x[2])/n}')
          rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
          p99=$(ms "$(awk '$1=="99%"{print $2}' <<<"$out")")
          # the distribution's shape, p50/p75/p90 in ms (where the tails part)
          dist=$(for q in 50 75 90; do ms "$(awk -v q="$q%" '$1==q{print $2}' <<<"$out")"; echo; done | paste -sd/ -)
          cpu=$(awk -v a="$before" -v b="$after" -v hz="$hz" -v n="$reqs" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')
          errs=$(grep -cE "Non-2xx|Socket errors" <<<"$out" || true)
          echo "$pass $test $p rps $rps" >>"$results"; echo "$pass $test $p p99 $p99" >>"$results"; echo "$pass $test $p cpu $cpu" >>"$results"
          printf '%-5s %-9s %-12s %9.0f req/s  p99 %6.2f ms  %5.1f µs CPU/req  split %s  p50/75/90 %s  cs/req %s%s\n' "$pass" "$test" "$p" "$rps" "$p99" "$cpu" "$spread" "$dist" "$cs" "$([ "$errs" = 0 ] || echo '  (errors!)')"
          ;;
        newconn|tlsnew)
          u=$url; [ $test = tlsnew ] && u=$tls_url
          out=$(wrk -t2 -c"$CONNS" -d"$T"s -H "Connection: close" "$u")
          rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
          echo "$pass $test $p rps $rps" >>"$results"
          printf '%-5s %-9s %-12s %9.0f req/s\n' "$pass" "$test" "$p" "$rps"
          ;;
        h2)
          out=$(h2load -c"$CONNS" -m10 -t2 -D "$T" --warm-up-time="$WARMUP" "$tls_url" 2>&1)
          rps=$(awk '/^finished in/{gsub(",","",$4); print $4}' <<<"$out")
          echo "$pass $test $p rps $rps" >>"$results"
          printf '%-5s %-9s %-12s %9.0f req/s  (%s)\n' "$pass" "$test" "$p" "$rps" "$(grep -o '[0-9]* succeeded, [0-9]* failed' <<<"$out" | head -1)"
          ;;
      esac
    done
  done
done

echo
echo "weft / peer, median over $PASSES passes [min–max]  (req/s and handshakes: higher is better; p99 and CPU: lower is better)"
for test_metric in "keepalive rps" "keepalive p99" "keepalive cpu" "newconn rps" "tlsnew rps" "h2 rps"; do
  set -- $test_metric
  for peer in nginx nginx-pinned haproxy caddy; do
    awk -v t="$1" -v m="$2" -v peer="$peer" '
      $2==t && $4==m { v[$1" "$3]=$5; passes[$1]=1 }
      END {
        n=0
        for (p in passes) if ((p" weft") in v && (p" "peer) in v && v[p" "peer] > 0) r[++n]=v[p" weft"]/v[p" "peer]
        if (n==0) exit
        for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (r[j]<r[i]) { x=r[i]; r[i]=r[j]; r[j]=x }
        med = (n%2) ? r[(n+1)/2] : (r[n/2]+r[n/2+1])/2
        printf "%-10s %-4s vs %-12s %.2fx  [%.2f–%.2f]\n", t, m, peer, med, r[1], r[n]
      }' "$results"
  done
done
if [ -n "$REFERENCE" ]; then
  echo "reference: minproxy / nginx, keep-alive"
  for m in rps p99 cpu; do
    awk -v m="$m" '$2=="keepalive" && $4==m { v[$1" "$3]=$5; passes[$1]=1 }
      END {
        n=0
        for (p in passes) if ((p" minproxy") in v && v[p" nginx"] > 0) r[++n]=v[p" minproxy"]/v[p" nginx"]
        if (n==0) exit
        for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (r[j]<r[i]) { x=r[i]; r[i]=r[j]; r[j]=x }
        med = (n%2) ? r[(n+1)/2] : (r[n/2]+r[n/2+1])/2
        printf "keepalive  %-4s minproxy vs nginx  %.2fx  [%.2f–%.2f]\n", m, med, r[1], r[n]
      }' "$results"
  done
fi
