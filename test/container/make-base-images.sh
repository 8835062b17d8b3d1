#!/usr/bin/env bash
# Makes the two base images the Dockerfile names, for machines that cannot pull them:
#   docker.io/library/node:20-bookworm-slim  Debian 12 (debootstrap minbase) + this machine's Node
#   docker.io/library/node:20-bookworm       the same + g++, make, python3 (what the builder needs)
# Like the official images: a "node" user with uid 1000, Node and npm under /usr.
# Does nothing when both exist. Needs root, debootstrap, podman (with runc) and this machine's Node >= 20.
set -euo pipefail

PODMAN=(podman --runtime runc)
SLIM=docker.io/library/node:20-bookworm-slim
FULL=docker.io/library/node:20-bookworm
if "${PODMAN[@]}" image exists "$SLIM" && "${PODMAN[@]}" image exists "$FULL"; then exit 0; fi

work=$(mktemp -d /var/tmp/sluice-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log"; exit 1; }

# Node from this machine, where the official image keeps it; headers so node-gyp needs no download.
node_bin=$(command -v node)
prefix=$(dirname "$(dirname "$(readlink -f "$node_bin")")")
install -m 0755 "$(readlink -f "$node_bin")" "$rootfs/usr/bin/node"
mkdir -p "$rootfs/usr/include" "$rootfs/usr/lib/node_modules"
cp -a "$prefix/include/node" "$rootfs/usr/include/node"
cp -a "$prefix/lib/node_modules/npm" "$rootfs/usr/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/bin/npx"
chroot "$rootfs" /usr/sbin/groupadd --gid 1000 node
chroot "$rootfs" /usr/sbin/useradd --uid 1000 --gid node --shell /bin/bash --create-home node
chroot "$rootfs" /usr/bin/node --version >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
  --change 'CMD ["node"]' --change 'ENV npm_config_nodedir=/usr' - "$SLIM" >/dev/null

# The builder fetches from the npm registry: it trusts what this machine trusts (local CAs
# such as an egress proxy's live in /usr/local/share/ca-certificates).
mkdir -p "$work/certs"
cp /usr/local/share/ca-certificates/*.crt "$work/certs/" 2>/dev/null || true
cat >"$work/Containerfile" <<EOC
FROM $SLIM
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      g++ make python3 ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/* && update-ca-certificates >/dev/null
ENV npm_config_cafile=/etc/ssl/certs/ca-certificates.crt
EOC
"${PODMAN[@]}" build --pull=never --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  -t "$FULL" -f "$work/Containerfile" "$work" >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
echo "made $SLIM and $FULL"
