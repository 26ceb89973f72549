#!/usr/bin/env bash
# Installs or upgrades the autoheal agent from this unpacked package. SSM Distributor runs it as
# root from the package folder; running it again changes nothing but restarting the agent.
#
# - creates the system user `autoheal` (no login, no home) and /etc/autoheal{,/tls};
# - installs the binary, the unit and the polkit helper (replacing older ones atomically);
# - writes /etc/autoheal/agent.toml only when there is none: an upgrade keeps the operator's;
# - enables the service and (re)starts it, so an upgrade runs the new binary at once.
#
# DESTDIR=DIR installs under DIR instead of / (tests; systemctl and useradd from PATH).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
user=autoheal
unit=autoheal-agent.service

log() { echo "autoheal-agent install: $*"; }
die() { echo "autoheal-agent install: $*" >&2; exit 1; }

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "must run as root (SSM Distributor does)"
fi
for f in autoheal-agent autoheal-agent.service autoheal-agent-allow-restarts agent.toml; do
  [ -f "$here/$f" ] || die "package is incomplete: $f is missing"
done

# The service account. Looked up in the passwd file itself (not NSS) so the same code works
# for a DESTDIR root; system users are always local.
passwd_field() { awk -F: -v u="$1" -v f="$2" '$1 == u { print $f; exit }' "$root/etc/passwd" 2>/dev/null; }
if [ -z "$(passwd_field "$user" 1)" ]; then
  args=(--system --user-group --home-dir /nonexistent --no-create-home
        --shell /usr/sbin/nologin --comment "autoheal agent")
  if [ -n "$root" ]; then args+=(--root "$root"); fi
  useradd "${args[@]}" "$user"
  log "created system user $user"
fi
uid=$(passwd_field "$user" 3)
gid=$(passwd_field "$user" 4)
if [ -z "$uid" ] || [ -z "$gid" ]; then die "user $user has no entry in $root/etc/passwd"; fi

# Ownership needs root; a non-root test run still checks files and modes.
own() { if [ "$(id -u)" -eq 0 ]; then chown "$1" "$2"; fi; }

# Config and keys: root writes them, the agent only reads them (group autoheal).
for d in "$root/etc/autoheal" "$root/etc/autoheal/tls"; do
  mkdir -p "$d"
  own "0:$gid" "$d"
  chmod 0750 "$d"
done
# Key material an operator dropped in before installing: the agent must read the key, no one else.
tls=$root/etc/autoheal/tls
for f in "$tls"/*-key.pem; do
  [ -f "$f" ] || continue
  own "$uid:$gid" "$f"
  chmod 0600 "$f"
done

# Replace a file atomically (a running agent keeps its old inode; systemd never sees half a unit).
put() { # SRC DEST MODE
  local dir tmp
  dir=$(dirname "$2")
  mkdir -p "$dir"
  tmp=$(mktemp "$dir/.autoheal.XXXXXX")
  cp "$1" "$tmp"
  own 0:0 "$tmp"
  chmod "$3" "$tmp"
  mv -f "$tmp" "$2"
}
put "$here/autoheal-agent" "$root/usr/local/bin/autoheal-agent" 0755
put "$here/autoheal-agent-allow-restarts" "$root/usr/local/sbin/autoheal-agent-allow-restarts" 0755
# The unit belongs to the package: local changes go in autoheal-agent.service.d/ drop-ins,
# which an upgrade leaves alone.
put "$here/autoheal-agent.service" "$root/etc/systemd/system/$unit" 0644

config=$root/etc/autoheal/agent.toml
if [ -e "$config" ]; then
  log "keeping the existing $config"
else
  put "$here/agent.toml" "$config" 0640
  log "wrote a starter $config (supervises nothing until you edit it)"
fi
own "0:$gid" "$config"
chmod 0640 "$config"

# The unit refreshes the polkit rule at every start; writing it now too means the rule is
# there even before the first start.
DESTDIR=$root "$root/usr/local/sbin/autoheal-agent-allow-restarts"

# Restarts are authorised by a JavaScript polkit rule: without polkit, or with the pre-0.106
# polkit of older Ubuntu (.pkla files only), the agent still checks and reports but cannot
# restart units. Said here, not failed: the rest of the agent is still worth having.
if [ -z "$root" ]; then
  polkit_version=$(pkaction --version 2>/dev/null | awk '{ print $NF }' || true)
  case $polkit_version in
    "") log "WARNING: polkit is not installed: the agent will not be able to restart units" ;;
    0.10[0-5] | 0.10[0-5].*) log "WARNING: polkit $polkit_version has no JavaScript rules: the agent will not be able to restart units" ;;
  esac
fi

systemctl daemon-reload
systemctl enable "$unit"
systemctl restart "$unit"
log "installed $("$root/usr/local/bin/autoheal-agent" --version 2>/dev/null || echo autoheal-agent) and (re)started $unit"
