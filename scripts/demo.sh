#!/usr/bin/env bash
# weft's main job: a 3-node lab in network namespaces (embedded etcd, VXLAN fabric), pods
# attached through the real weft-cni exec path, a service in front of them, the full check,
# everything torn down.
source "$(dirname "$0")/lib.sh"
apt_need iproute2 util-linux
build
exec ./bin/weft lab demo "$@"
