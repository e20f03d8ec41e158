"""Print the systemd drop-in that lets the sorter units reach the network peers their configuration names.

The units deny every IP address but loopback (IPAddressDeny=any, IPAddressAllow=localhost). install.sh runs
this with the installed venv's python and writes the result as `<unit>.d/50-ip-allow.conf`, so the MQTT
broker, the webhook, the fleet broker and a stream camera stay reachable and nothing else does. systemd
takes addresses, not names: host names are resolved now (rerun install.sh when they move) and the
nameservers of /etc/resolv.conf are allowed too, so that the daemon can resolve them itself.

    python deploy/ip_allow.py [--config /etc/sorter/sorter.toml] [--allow HOST]...
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from sorter.config import ConfigError, Settings, load_settings


def peers(settings: Settings) -> list[str]:
    """Host names or addresses the configuration connects to (loopback ones are allowed anyway)."""
    hosts = []
    outputs = settings.outputs
    if outputs.mqtt is not None:
        hosts.append(outputs.mqtt.host)
    if outputs.webhook is not None:
        hosts.append(urlsplit(outputs.webhook.url).hostname or "")
    if settings.fleet.broker:
        hosts.append(settings.fleet.broker.split(":")[0])  # HOST[:PORT]
    device = settings.camera.device or ""
    if "://" in device:  # rtsp://, http://: a stream camera (an index or a file needs no network)
        hosts.append(urlsplit(device).hostname or "")
    return [h.strip("[]") for h in hosts if h]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str) -> list[str]:
    """The addresses of one peer; a name that does not resolve is one warning line and nothing allowed."""
    if _is_address(host):
        return [host]
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        print(f"warning: {host} does not resolve ({exc.strerror or exc}): not allowed; rerun install.sh once it does",
              file=sys.stderr)
        return []
    return sorted({str(info[4][0]) for info in infos})


def nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The resolvers a name lookup goes to (127.0.0.53 for systemd-resolved, which loopback covers)."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    found = [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]
    return [ns.split("%")[0] for ns in found if _is_address(ns.split("%")[0])]


def allowed(hosts: list[str], resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """Addresses to allow, loopback left out (the units allow it already), in a stable order."""
    addresses = {addr for host in hosts for addr in resolve(host)}
    if any(not _is_address(host) for host in hosts):
        addresses.update(nameservers(resolv_conf))
    return sorted((a for a in addresses if not ipaddress.ip_address(a).is_loopback),
                  key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def render(addresses: list[str], source: str) -> str:
    lines = [f"# Written by deploy/install.sh from {source} (deploy/ip_allow.py): rerun it after changing",
             "# the broker, webhook or camera hosts. Loopback is allowed by the unit itself.", "[Service]"]
    if addresses:
        lines.append("IPAddressAllow=" + " ".join(addresses))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="sorter.toml (default: as sorter finds it)")
    parser.add_argument("--allow", action="append", default=[], help="another host to allow (repeatable)")
    parser.add_argument("--resolv-conf", type=Path, default=Path("/etc/resolv.conf"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hosts = peers(settings) + [h for h in args.allow if h]
    sys.stdout.write(render(allowed(hosts, args.resolv_conf), str(args.config or "the configuration")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
