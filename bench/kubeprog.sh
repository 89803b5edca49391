#!/usr/bin/env bash
# Kubernetes mode's network programming latency (issue 16's target: an endpoint change in
# the API programmed on every node within 1 s at 1,000 services): a 2-node
# `weft lab up --kubernetes`, N services × E endpoints created through the API, then C
# one-endpoint changes, each node's weft_network_programming_duration_seconds read back
# (bench/kubeprog). Needs root, `bin/` built and kube-apiserver/kube-controller-manager in
# $WEFT_KUBE_DIR (default GOPATH/weft-kube-v1.37.2, built by the test command).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-bin}")
export WEFT_KUBE_DIR=${WEFT_KUBE_DIR:-$(go env GOPATH)/weft-kube-v1.37.2}
T=kp$$
cleanup() { "$BIN/weft" lab down --name "$T" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$BIN/weft" lab up -d --name "$T" --nodes 2 --kubernetes >/dev/null
go run ./bench/kubeprog -lab "$T" -services "${SERVICES:-1000}" -endpoints "${ENDPOINTS:-10}" -changes "${CHANGES:-50}"
