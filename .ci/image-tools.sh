#!/usr/bin/env bash
# podman, buildah and debootstrap for `make image-test`, from Debian's packages, when missing (as root).
# Exit 0 when the tools are there; where apt cannot install them (no mirror), one SKIPPED line and exit 1,
# so that .ci/run skips the image test instead of failing every change during an outage.
set -euo pipefail
missing=()
for tool in podman buildah debootstrap; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "image-test: SKIPPED: ${missing[*]} missing and not root to install them (apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "image-tools: installing ${missing[*]}" >&2
if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" > /tmp/image-tools.log 2>&1 \
    || { apt-get update -q > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" > /tmp/image-tools.log 2>&1; }; }; then
    echo "image-test: SKIPPED: apt-get could not install ${missing[*]} (see /tmp/image-tools.log)" >&2
    exit 1
fi
