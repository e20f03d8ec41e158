#!/usr/bin/env bash
# Install (or update) the sorter on a Debian-based edge box, Raspberry Pi OS 64-bit included.
# Idempotent: run it again after `git pull` to update the code and units.
#   sudo deploy/install.sh [--prefix /opt/sorter] [--dry-run]
set -euo pipefail

PREFIX=/opt/sorter
STATE=/var/lib/sorter
CONF=/etc/sorter
UNITS=/etc/systemd/system
DRY_RUN=0
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  echo "usage: $0 [--prefix DIR] [--dry-run]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "run as root (or with --dry-run to see the steps)" >&2
  exit 1
fi

# 1. packages: Python venv support, the OpenCV runtime libraries
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  run apt-get update
  run apt-get install -y --no-install-recommends python3 python3-venv python3-pip
fi

# 2. the service user and its groups (video for cameras, gpio for trigger/ejector pins)
for group in video gpio; do
  getent group "$group" >/dev/null || run groupadd --system "$group"
done
if ! id sorter >/dev/null 2>&1; then
  run useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin --groups video,gpio sorter
fi

# 3. folders: state owned by sorter, config and models readable by it only (models change through
#    `sudo sorter model install`, run as root; the units also mount them read-only)
for dir in "$STATE" "$STATE/incoming" "$STATE/sorted" "$STATE/snapshots"; do
  run install -d -o sorter -g sorter -m 0750 "$dir"
done
run install -d -o root -g sorter -m 2750 "$STATE/models"
run install -d -o root -g sorter -m 0750 "$CONF"
if [ ! -e "$CONF/sorter.toml" ]; then
  run install -o root -g sorter -m 0640 "$SRC/deploy/sorter.toml" "$CONF/sorter.toml"
fi

# 4. the venv (runtime only, no TensorFlow), rebuilt in place on every run
run install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || run python3 -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
run "$PREFIX/venv/bin/pip" install --quiet "${SRC}[report]"
# the documentation the units' Documentation= lines point at
run install -D -m 0644 "$SRC/deploy/README.md" "$PREFIX/deploy/README.md"
run install -D -m 0644 "$SRC/docs/reports.md" "$PREFIX/docs/reports.md"

# 5. the bundled default model, when none is installed yet (a new bundle later: sorter model install)
if [ ! -e "$STATE/models/current" ]; then
  run "$PREFIX/venv/bin/sorter" model install "$SRC/models/fruit-lite1-int8.tflite" --dir "$STATE/models"
fi
# root's, readable by the sorter group, writable by nobody else (also on a box installed before this rule)
run chown -R root:sorter "$STATE/models"
run chmod -R u=rwX,g=rX,o= "$STATE/models"

# 6. units, with the paths of this prefix
for unit in sorter-watch.service sorter-camera@.service sorter-prune.service sorter-prune.timer \
            sorter-report.service sorter-report.timer; do
  [ -f "$SRC/deploy/systemd/$unit" ] || continue
  if [ "$DRY_RUN" = 1 ]; then
    echo "would install $UNITS/$unit"
  else
    sed "s#/opt/sorter/#$PREFIX/#g" "$SRC/deploy/systemd/$unit" > "$UNITS/$unit.tmp"
    chmod 0644 "$UNITS/$unit.tmp"
    mv "$UNITS/$unit.tmp" "$UNITS/$unit"
  fi
done
# 7. the network peers of the config (MQTT, webhook, fleet broker, stream camera): the units allow loopback only
for unit in sorter-watch.service sorter-camera@.service sorter-report.service; do
  dropin="$UNITS/$unit.d/50-ip-allow.conf"
  if [ "$DRY_RUN" = 1 ]; then
    echo "would write $dropin from $CONF/sorter.toml (deploy/ip_allow.py)"
  else
    install -d -m 0755 "$UNITS/$unit.d"
    "$PREFIX/venv/bin/python" "$SRC/deploy/ip_allow.py" --config "$CONF/sorter.toml" > "$dropin.tmp"
    chmod 0644 "$dropin.tmp"
    mv "$dropin.tmp" "$dropin"
  fi
done
run systemctl daemon-reload
run systemctl enable --now sorter-prune.timer
[ -f "$UNITS/sorter-report.timer" ] && run systemctl enable --now sorter-report.timer

echo "installed, with the bundled model as $STATE/models/current (your own: sudo sorter model install NEW.tflite"
echo "--dir $STATE/models). Edit $CONF/sorter.toml, check it (sorter config check; sorter doctor), then:"
echo "  systemctl enable --now sorter-watch.service    # and/or sorter-camera@0.service"
