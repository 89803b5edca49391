#!/usr/bin/env bash
# weft's whole test suite. As root it installs the real peers and runs every privileged
# test as on a machine that has never run weft: in a mount namespace of its own where
# /run/netns starts as a plain directory, and a PID namespace that catches every process
# left behind. A privileged test that skips is a failure then, and so is anything the suite
# leaves behind (named namespaces, links, nftables tables, bpffs mounts, processes).
source "$(dirname "$0")/lib.sh"

GOTESTSUM_VERSION=v1.13.0
PLUGINS_VERSION=v1.9.1 # the reference CNI plugins weft's go.mod uses; Debian ships 1.1.1

# snapshot prints what a run must not leave behind, one item a line.
snapshot() {
  ls -1 /run/netns 2>/dev/null | sed 's/^/netns /' || true
  ip -o link show | awk -F': ' '{print "link " $2}' | sed 's/@.*//'
  nft list tables 2>/dev/null | sed 's/^/nft /' || true
  findmnt -rn -t bpf -o TARGET 2>/dev/null | sed 's/^/bpffs /' || true
  # weft's eBPF programs still loaded (the socket LB's hang on the host's cgroup root)
  bpftool prog show 2>/dev/null | grep -o 'name weft_[a-z0-9_]*' | sort | uniq -c | sed 's/^ */bpf /' || true
}

# leftovers BEFORE AFTER: what AFTER has that BEFORE had not.
leftovers() { comm -13 <(sort -u <<<"$1") <(sort -u <<<"$2"); }

if [ "${WEFT_TEST_INNER:-}" != 1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt_need iproute2 util-linux procps nftables iptables iputils-ping containernetworking-plugins busybox-static \
      iperf3 sockperf podman containerd runc conmon etcd-server dnsutils bird2 frr wrk \
      clang llvm libbpf-dev bpftool conntrack
  else
    echo "not root: privileged tests will skip"
  fi
  build
  command -v cnitool >/dev/null 2>&1 || go install github.com/containernetworking/cni/cnitool@v1.3.1
  command -v crictl >/dev/null 2>&1 || go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0
  command -v gotestsum >/dev/null 2>&1 || go install gotest.tools/gotestsum@$GOTESTSUM_VERSION
  export WEFT_CNI_PLUGINS_V191="$(go env GOPATH)/weft-cni-plugins-$PLUGINS_VERSION"
  [ -x "$WEFT_CNI_PLUGINS_V191/bandwidth" ] ||
    GOBIN="$WEFT_CNI_PLUGINS_V191" go install "github.com/containernetworking/plugins/plugins/meta/bandwidth@$PLUGINS_VERSION"

  # GoBGP v4's gobgpd for the racked lab's --tor gobgpd (Debian's 3.10 cannot talk to
  # Debian's FRR 8.4 zebra: see internal/lab/racks.go).
  export WEFT_GOBGP_DIR="$(go env GOPATH)/weft-gobgp-v4.8.0"
  [ -x "$WEFT_GOBGP_DIR/gobgpd" ] ||
    GOBIN="$WEFT_GOBGP_DIR" go install github.com/osrg/gobgp/v4/cmd/gobgpd@v4.8.0 github.com/osrg/gobgp/v4/cmd/gobgp@v4.8.0

  # The Kubernetes control plane for the Kubernetes-mode tests, built from k8s.io/kubernetes
  # (tools/kube, a module of its own) the first time: about 9 minutes on 2 cores, then cached.
  export WEFT_KUBE_DIR="$(go env GOPATH)/weft-kube-v1.37.2"
  if [ ! -x "$WEFT_KUBE_DIR/kube-apiserver" ] || [ ! -x "$WEFT_KUBE_DIR/kube-controller-manager" ]; then
    echo "== building kube-apiserver and kube-controller-manager v1.37.2 (first run only)"
    (cd tools/kube && go build -o "$WEFT_KUBE_DIR/" \
      -ldflags "-X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
  fi

  echo "== go vet"
  go vet ./...

  if [ "$(id -u)" -ne 0 ]; then
    exec env WEFT_TEST_INNER=1 bash "$0"
  fi
  export WEFT_REQUIRE_PRIVILEGED=1
  before=$(snapshot)
  set +e
  # A private mount namespace (mounts made inside never reach the host) and a PID namespace
  # whose init is the inner run: orphans are re-parented to it, so none escapes the count.
  unshare --mount --propagation private --pid --fork --mount-proc env WEFT_TEST_INNER=1 bash "$0"
  rc=$?
  set -e
  left=$(leftovers "$before" "$(snapshot)")
  if [ -n "$left" ]; then
    echo "== left behind on the host (forbidden):"
    echo "$left"
    rc=1
  fi
  exit $rc
fi

# ---- inner run: in the fresh mount and PID namespaces when root ----
if [ "$(id -u)" -eq 0 ]; then
  # What a new machine has: /run/netns a plain directory, no mount on it.
  while mountpoint -q /run/netns 2>/dev/null; do umount -l /run/netns; done
  mkdir -p /run/netns
fi
before=$(snapshot)

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
echo "== go test"
set +e
# gotestsum prints every failed test's own output in full at the end (parallel subtests
# included), from go test's JSON events.
gotestsum --format testname --jsonfile "$log/test.json" --format-hide-empty-pkg -- -count=1 -timeout 15m ./...
rc=$?
set -e

echo "== fuzz (brief)"
# Budgets are execution counts (about 8 s each here), not durations: with a duration, Go
# before 1.27 can fail a clean run with "context deadline exceeded" as the time runs out
# (golang/go#75804).
for spec in config:FuzzParse:300000 config:FuzzParseAddrOrPrefix:600000 netcalc:FuzzSplitSummarize:600000 \
            netcalc:FuzzSummarizeExact:600000 netcalc:FuzzParseCIDR:600000 network:FuzzParsePool:500000 \
            cli:FuzzSubnetCLI:60000 manifest:FuzzParse:100000 dns:FuzzAnswer:200000 dns:FuzzPackedAnswer:100000 \
            ingress/proxy:FuzzParseRequest:200000; do
  IFS=: read -r pkg target execs <<<"$spec"
  if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "${execs}x" "./internal/$pkg/" >"$log/fuzz" 2>&1; then
    echo "fuzz $target failed:"; cat "$log/fuzz"; rc=1
  fi
done

count() { grep -E "\"Action\":\"$1\"" "$log/test.json" | grep -c '"Test":' || true; }
passed=$(count pass)
failed=$(count fail)
skipped=$(count skip)
if [ "${WEFT_REQUIRE_PRIVILEGED:-}" = 1 ] && [ "$skipped" -gt 0 ]; then
  echo "== skipped tests (forbidden as root):"
  grep -E '"Action":"skip"' "$log/test.json" | grep -o '"Package":"[^"]*","Test":"[^"]*"' | sed 's/"Package":"//; s/","Test":"/ /; s/"$//'
  rc=1
fi

# Everything the suite started must be gone: in the PID namespace only this shell (PID 1)
# is left, and nothing else of the snapshot grew.
if [ "$(id -u)" -eq 0 ]; then
  ps -e -o pid=,stat=,args= >"$log/ps" # from this shell itself: no subshell in the list
  procs=$(awk '$1 != 1 && $2 !~ /^Z/ && $3 != "ps"' "$log/ps")
  if [ -n "$procs" ]; then
    echo "== processes left behind (forbidden):"
    echo "$procs"
    rc=1
  fi
  left=$(leftovers "$before" "$(snapshot)")
  if [ -n "$left" ]; then
    echo "== left behind (forbidden):"
    echo "$left"
    rc=1
  fi
fi
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $rc
