# sluice container: the addon and the TypeScript are built in a builder stage; the runtime
# image holds only Node and the libraries it links, the production node_modules and the built
# addon (no shell, no compiler, no package manager), and runs as an unprivileged user.
#
#   podman build --format docker -t sluice .   (or docker build; the OCI format has no HEALTHCHECK)
#   podman run --rm -p 8080:8080 -e APP_ADDRESS=host.example:3000 sluice
#
# Node is PID 1: sluice handles SIGTERM/SIGINT itself (graceful drain, then exit 0), and the
# only children it starts are its own workers, which it waits for.
ARG NODE_IMAGE=docker.io/library/node:20-bookworm

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json binding.gyp tsconfig.json ./
COPY native ./native
COPY proxy ./proxy
COPY bench ./bench
COPY config ./config
# npm ci compiles the splice addon (install script: g++, make, python3) and the TypeScript
# (prepare); the runtime stage gets only the production dependencies.
RUN npm ci --no-audit --no-fund \
    && test -f build/Release/sluice_splice.node \
    && npm prune --omit=dev --no-audit --no-fund

# The runtime's whole filesystem, gathered from the slim image: Node, the C and C++ libraries
# it and the addon link (from ldd), and a passwd entry for uid 1000. No shell, no package manager.
FROM ${NODE_IMAGE}-slim AS runtime-root
RUN set -eu; mkdir -p /rootfs/usr/bin /rootfs/etc /rootfs/tmp; \
    cp /usr/bin/node /rootfs/usr/bin/node; \
    for lib in $(ldd /usr/bin/node | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }'); do \
      mkdir -p "/rootfs$(dirname "$lib")"; cp -L "$lib" "/rootfs$lib"; \
    done; \
    echo 'node:x:1000:1000:node:/app:/nonexistent' > /rootfs/etc/passwd; \
    echo 'node:x:1000:' > /rootfs/etc/group; \
    chmod 1777 /rootfs/tmp

FROM scratch AS runtime
COPY --from=runtime-root /rootfs /
WORKDIR /app
COPY --from=build /src/package.json /src/binding.gyp ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/build/Release/sluice_splice.node ./build/Release/sluice_splice.node
COPY --from=build /src/dist/proxy ./dist/proxy
COPY --from=build /src/config ./config
ENV NODE_ENV=production \
    SLUICE_LOG_FORMAT=json \
    SLUICE_LISTEN=0.0.0.0:8080 \
    APP_ADDRESS=127.0.0.1:3000 \
    SLUICE_ADMIN=127.0.0.1:9901
# A numeric uid (the image's "node" user) so runAsNonRoot can verify it without a passwd lookup.
USER 1000:1000
EXPOSE 8080 9901
# `sluice health` asks the admin address of the config the running sluice (PID 1) was started with.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["node", "/app/dist/proxy/cli.js", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/dist/proxy/cli.js"]
CMD ["--config", "/app/config/sidecar.yaml"]
