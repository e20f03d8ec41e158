#!/usr/bin/env bash
# A container base image made offline from Debian's packages, for the Containerfiles' BASE build argument
# where no registry is reachable (and for tests/test_containers.py). It prints the image name.
#   tools/container-base.sh [CACHE_DIR]        # default: build/containers (ignored by git)
#   buildah bud --isolation chroot --build-arg BASE="$(tools/container-base.sh)" -f deploy/Containerfile.runtime .
# The tarball (mmdebstrap, about 170 MB) is built once per suite and package list, named by their hash, and
# imported into buildah's storage once; later runs only print the name.
set -euo pipefail

SUITE=bookworm   # Debian 12: python3 is 3.11, as pyproject.toml requires
PACKAGES=python3,python3-venv,ca-certificates,passwd
CACHE="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/containers}"

for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || { echo "$tool missing (apt-get install $tool)" >&2; exit 3; }
done

key="$(printf '%s %s\n' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)"
image="localhost/sorter-base:$SUITE-$key"
tarball="$CACHE/base-$SUITE-$key.tar"

if buildah inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

mkdir -p "$CACHE"
if [ ! -s "$tarball" ]; then
  # Docs, man pages and translations are left out: the image only runs python3.
  mmdebstrap --quiet --variant=apt --format=tar --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' "$SUITE" "$tarball.part" >&2
  mv "$tarball.part" "$tarball"
fi

container="$(buildah from scratch)"
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah add --quiet "$container" "$tarball" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 "$container"
buildah commit --quiet "$container" "$image" >/dev/null
echo "$image"
