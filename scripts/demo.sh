#!/usr/bin/env bash
# weft's main job: a single-node lab in network namespaces, pods attached through the real
# weft-cni exec path, addresses and a ping matrix printed, everything torn down.
source "$(dirname "$0")/lib.sh"
apt_need iproute2 util-linux
build
exec ./bin/weft lab demo "$@"
