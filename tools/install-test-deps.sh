#!/usr/bin/env bash
# The system programs the test suite uses besides Python (`make test` and .ci/run both run this first).
# Each one missing makes its tests skip, so: as root with apt-get, install them; otherwise say exactly what
# to install. Never fails the caller: the suite still runs, and pytest -ra lists what it skipped and why.
#   tools/install-test-deps.sh [--check]      # --check: only report, install nothing
set -euo pipefail

CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# program (as the tests look for it) -> Debian package, and which tests need it
needs=(
  "mosquitto:mosquitto:MQTT outputs and the fleet report (a real broker)"
  "systemd-analyze:systemd:deploy/systemd units (verify, security)"
  "shellcheck:shellcheck:deploy/install.sh and tools/*.sh"
  "/usr/bin/chromium:chromium:the HTML report in a real browser"
  "buildah:buildah:deploy/Containerfile.* (built and run)"
  "mmdebstrap:mmdebstrap:the offline container base"
)

found() {
  case "$1" in
    /*) [ -x "$1" ] ;;
    *) PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null ;;
  esac
}

missing=()
for need in "${needs[@]}"; do
  IFS=: read -r program package why <<<"$need"
  found "$program" || { missing+=("$package"); echo "missing: $program ($package): $why" >&2; }
done
[ "$(id -u)" = 0 ] || echo "note: the container tests (buildah --isolation chroot, mmdebstrap) need root" >&2
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$CHECK" = 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt-get)" >&2
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "warning: could not install ${missing[*]}: the tests that need them will be skipped" >&2
else
  echo "their tests will be skipped; to run them: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
fi
exit 0
