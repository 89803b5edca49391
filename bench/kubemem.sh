#!/usr/bin/env bash
# Kubernetes mode's memory target: weftd against kube-proxy (nftables mode, built from the
# same k8s.io/kubernetes v1.37.2 as the API server) at 1,000 services × 10 endpoints and
# 100 nodes, against the same API server (bench/kubemem). Needs root, `bin/` built, and
# kube-apiserver, kube-controller-manager and kube-proxy in $WEFT_KUBE_DIR (kube-proxy:
# cd tools/kube && go build -o "$WEFT_KUBE_DIR/" k8s.io/kubernetes/cmd/kube-proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-bin}")
export WEFT_KUBE_DIR=${WEFT_KUBE_DIR:-$(go env GOPATH)/weft-kube-v1.37.2}
T=km$$
cleanup() { "$BIN/weft" lab down --name "$T" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# Both binaries start from the same page-cache state: none of their pages cached, so each
# is faulted in from disk as a deployed binary is. A binary just written by `go build`
# sits in the cache in large folios that are mapped 2 MiB at a time (FilePmdMapped), which
# made weftd's resident set look 15-20 MiB larger than the same pages read from disk.
for f in "$BIN/weftd" "$WEFT_KUBE_DIR/kube-proxy"; do dd if="$f" iflag=nocache count=0 status=none; done
"$BIN/weft" lab up -d --name "$T" --nodes 1 --kubernetes >/dev/null
go run ./bench/kubemem -lab "$T" -kube-proxy "$WEFT_KUBE_DIR/kube-proxy" \
  -nodes "${NODES:-100}" -services "${SERVICES:-1000}" -endpoints "${ENDPOINTS:-10}" ${HEAP:+-heap "$HEAP"}
