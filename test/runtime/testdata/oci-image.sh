#!/usr/bin/env bash
# oci-image.sh ROOTFS OUT.tar REF [ENTRYPOINT...]: pack a root filesystem into a one-layer
# OCI image archive that `ctr images import` accepts (no registry needed).
set -euo pipefail
rootfs=$1 out=$2 ref=$3; shift 3
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/oci/blobs/sha256"
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$work/oci/blobs/sha256/$d"; echo "$d $(stat -c %s "$1")"; }
tar -C "$rootfs" --numeric-owner -cf "$work/layer.tar" .
diffid=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
read -r ldig lsize < <(blob "$work/layer.tar.gz")
proc='"Cmd":["/bin/sh"]'
if [ $# -gt 0 ]; then proc="\"Entrypoint\":[$(printf '"%s",' "$@" | sed 's/,$//')]"; fi
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$proc" "$diffid" > "$work/config.json"
read -r cdig csize < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$cdig" "$csize" "$ldig" "$lsize" > "$work/manifest.json"
read -r mdig msize < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"},"platform":{"architecture":"amd64","os":"linux"}}]}' "$mdig" "$msize" "${ref##*:}" > "$work/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
tar -C "$work/oci" -cf "$out" oci-layout index.json blobs
