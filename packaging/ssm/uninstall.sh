#!/usr/bin/env bash
# Stops and removes the autoheal agent. SSM Distributor runs it as root from the package folder,
# also as the first half of an "uninstall and reinstall" upgrade; running it twice is harmless.
#
# Keeps /etc/autoheal (the operator's config and the instance's TLS key) and the `autoheal`
# user, so a reinstall or an upgrade finds them: removing a user also frees its uid for reuse
# by a stranger while files may still carry it. SSM_AUTOHEAL_PURGE=true (an additional
# argument of AWS-ConfigureAWSPackage) removes both as well.
#
# DESTDIR=DIR works under DIR instead of / (tests; systemctl and userdel from PATH).
set -euo pipefail

root=${DESTDIR:-}
user=autoheal
unit=autoheal-agent.service

log() { echo "autoheal-agent uninstall: $*"; }

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "autoheal-agent uninstall: must run as root (SSM Distributor does)" >&2
  exit 1
fi

unit_file=$root/etc/systemd/system/$unit
if [ -e "$unit_file" ]; then
  # A unit that is already stopped or was never started is not an error here.
  systemctl disable --now "$unit" || log "could not stop $unit cleanly; removing it anyway"
fi
rm -f "$unit_file" \
  "$root/usr/local/bin/autoheal-agent" \
  "$root/usr/local/sbin/autoheal-agent-allow-restarts" \
  "$root/etc/polkit-1/rules.d/50-autoheal-agent.rules"
systemctl daemon-reload
log "removed the agent, its unit and its polkit rule"

if [ "${SSM_AUTOHEAL_PURGE:-false}" = true ]; then
  rm -rf "$root/etc/autoheal"
  if awk -F: -v u="$user" '$1 == u { found = 1 } END { exit !found }' "$root/etc/passwd" 2>/dev/null; then
    args=()
    if [ -n "$root" ]; then args+=(--root "$root"); fi
    userdel ${args[@]+"${args[@]}"} "$user"
  fi
  log "purged /etc/autoheal and the $user user"
else
  log "kept /etc/autoheal and the $user user (SSM_AUTOHEAL_PURGE=true removes them)"
fi
