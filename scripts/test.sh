#!/usr/bin/env bash
# weft's whole test suite. As root it installs the real peers and runs every privileged
# test; a privileged test that skips is a failure then.
source "$(dirname "$0")/lib.sh"

if [ "$(id -u)" -eq 0 ]; then
  apt_need iproute2 util-linux nftables iptables containernetworking-plugins busybox-static iperf3 sockperf podman containerd runc conmon etcd-server
  export WEFT_REQUIRE_PRIVILEGED=1
else
  echo "not root: privileged tests will skip"
fi
build
command -v cnitool >/dev/null 2>&1 || go install github.com/containernetworking/cni/cnitool@v1.3.1
command -v crictl >/dev/null 2>&1 || go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0

echo "== go vet"
go vet ./...

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== go test"
set +e
go test -v -count=1 -timeout 15m ./... >"$log" 2>&1
rc=$?
set -e
# Package lines, then whatever failed, in full.
grep -E '^(ok|FAIL|---|panic:)|^\s+--- FAIL' "$log" | grep -v -- '--- PASS' | grep -v -- '--- SKIP' || true
if [ $rc -ne 0 ]; then
  echo "== failures (full output of failing tests)"
  awk '/^=== RUN/{buf=""} {buf=buf $0 "\n"} /^\s*--- FAIL/{printf "%s", buf; buf=""}' "$log" | tail -400
fi

echo "== fuzz (brief)"
# Budgets are execution counts (about 8 s each here), not durations: with a duration, Go
# before 1.27 can fail a clean run with "context deadline exceeded" as the time runs out
# (golang/go#75804).
for spec in config:FuzzParse:300000 config:FuzzParseAddrOrPrefix:600000 netcalc:FuzzSplitSummarize:600000 \
            netcalc:FuzzSummarizeExact:600000 netcalc:FuzzParseCIDR:600000 network:FuzzParsePool:500000 \
            cli:FuzzSubnetCLI:60000; do
  IFS=: read -r pkg target execs <<<"$spec"
  if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "${execs}x" "./internal/$pkg/" >"$log.fuzz" 2>&1; then
    echo "fuzz $target failed:"; cat "$log.fuzz"; rc=1
  fi
done
rm -f "$log.fuzz"

passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
if [ "${WEFT_REQUIRE_PRIVILEGED:-}" = 1 ] && [ "$skipped" -gt 0 ]; then
  echo "== skipped tests (forbidden as root):"
  grep -E '^\s*--- SKIP' "$log"
  rc=1
fi
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $rc
