#!/usr/bin/env bash
# The agent's systemd unit and its polkit allowlist:
# - `systemd-analyze verify` prints nothing on stderr (run on a copy whose binaries point at stubs,
#   since verify needs them to exist);
# - `systemd-analyze security --offline=true` exposure is at most 2.0;
# - the privileges that must stay off stay off;
# - the polkit rule written from a config allows `restart` of exactly its units to the autoheal
#   user, and nothing else (evaluated in node with a fake polkit object).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$(dirname "$0")/../lib.sh"

max_exposure=${MAX_EXPOSURE:-2.0}
unit_src=$repo/packaging/systemd/autoheal-agent.service
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "systemd-analyze verify"
mkdir -p "$work/bin" "$work/unit"
for b in autoheal-agent autoheal-agent-allow-restarts; do
  printf '#!/bin/sh\nexit 0\n' >"$work/bin/$b"
  chmod +x "$work/bin/$b"
done
unit=$work/unit/autoheal-agent.service
sed -e "s#/usr/local/bin/#$work/bin/#g" -e "s#/usr/local/sbin/#$work/bin/#g" "$unit_src" >"$unit"
check "the copy differs from the unit only in binary paths" \
  is "$(diff "$unit_src" "$unit" | grep -c '^>')" 2
verify_quietly() { # UNIT: passes when verify exits 0 and says nothing on stderr
  local err rc=0
  err=$(systemd-analyze verify "$1" 2>&1 >/dev/null) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$err" ]; then
    printf '    exit %s, stderr:\n%s\n' "$rc" "$err" >&2
    return 1
  fi
}
check "systemd-analyze verify: exit 0, no warnings" verify_quietly "$unit"
# The gate must be able to fail: a misspelt directive is a warning.
sed 's/^ProtectSystem=strict$/ProtectSytem=strict/' "$unit" >"$work/unit/autoheal-broken.service"
check "verify gate catches a misspelt directive" not verify_quietly "$work/unit/autoheal-broken.service" 2>/dev/null

step "systemd-analyze security --offline=true (exposure <= $max_exposure)"
exposure() { # UNIT: prints the overall exposure
  systemd-analyze security --offline=true "$1" 2>/dev/null |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p'
}
within() { # VALUE MAX
  if [ -n "$1" ] && awk -v v="$1" -v m="$2" 'BEGIN { exit !(v <= m) }'; then return 0; fi
  echo "    exposure ${1:-unparsed} > $2" >&2
  return 1
}
measured=$(exposure "$unit")
echo "  exposure: ${measured:-unparsed}"
check "exposure ${measured:-?} <= $max_exposure" within "$measured" "$max_exposure"
# ...and must be able to fail: the same unit without its sandbox scores far worse.
grep -vE '^(Protect|Private|Restrict|SystemCall|Capability|NoNewPrivileges|IPAddress|LockPersonality|MemoryDeny|DevicePolicy|UMask|KeyringMode|RemoveIPC|ProcSubset|SecureBits)' \
  "$unit" >"$work/unit/autoheal-bare.service"
bare=$(exposure "$work/unit/autoheal-bare.service")
check "exposure gate fails an unsandboxed copy (scored ${bare:-?})" not within "$bare" "$max_exposure" 2>/dev/null

step "privileges that must stay off"
directive() { sed -n "s/^$1=//p" "$unit_src" | tail -n1; }
check "runs as User=autoheal" is "$(directive User)" autoheal
check "no capabilities (CapabilityBoundingSet= empty)" is "$(grep -c '^CapabilityBoundingSet=$' "$unit_src")" 1
check "no ambient capabilities" is "$(directive AmbientCapabilities)" ""
check "NoNewPrivileges=yes" is "$(directive NoNewPrivileges)" yes
check "ProtectSystem=strict" is "$(directive ProtectSystem)" strict
check "status socket under RuntimeDirectory=autoheal" is "$(directive RuntimeDirectory)" autoheal
check "a bad config (exit 64) is not restarted" is "$(directive RestartPreventExitStatus)" 64
check "only the polkit helper runs privileged (one '+' command)" \
  is "$(grep -E '^Exec[A-Za-z]*=[-@:!]*\+' "$unit_src" | sed 's/=.*//' | tr '\n' ' ')" "ExecStartPre "

step "polkit rule: restart of the configured units, nothing else"
cat >"$work/agent.toml" <<'TOML'
[services.web]
unit = "nginx"
[services.worker]
unit = "worker@1.service"   # templated instance
[services.evil]
unit = "-x"
[services.sneaky]
unit = "a\", \"sshd.service"
TOML
rule=$work/rules.d/50-autoheal-agent.rules
"$repo/packaging/systemd/autoheal-agent-allow-restarts" "$work/agent.toml" "$rule" 2>"$work/helper.err"
check "helper warns about the names it refuses" grep -q "ignoring unit '-x'" "$work/helper.err"
check "rule allows exactly nginx.service and worker@1.service" \
  grep -qxF '    var units = ["nginx.service", "worker@1.service"];' "$rule"
cp "$rule" "$work/before"
"$repo/packaging/systemd/autoheal-agent-allow-restarts" "$work/agent.toml" "$rule" 2>/dev/null
check "rewriting an unchanged rule leaves the file alone" cmp -s "$rule" "$work/before"
cat >"$work/eval.js" <<'JS'
// Loads a polkit rules file with a fake `polkit` and prints the decision for each case.
const fs = require("fs");
const rules = [];
const polkit = { Result: { YES: "yes", NO: "no", NOT_HANDLED: null }, addRule: (f) => rules.push(f) };
new Function("polkit", fs.readFileSync(process.argv[2], "utf8"))(polkit);
const cases = [
  ["org.freedesktop.systemd1.manage-units", "autoheal", "restart", "nginx.service"],
  ["org.freedesktop.systemd1.manage-units", "autoheal", "restart", "worker@1.service"],
  ["org.freedesktop.systemd1.manage-units", "autoheal", "stop", "nginx.service"],
  ["org.freedesktop.systemd1.manage-units", "autoheal", "start", "nginx.service"],
  ["org.freedesktop.systemd1.manage-units", "autoheal", "restart", "sshd.service"],
  ["org.freedesktop.systemd1.manage-units", "autoheal", "restart", "-x.service"],
  ["org.freedesktop.systemd1.manage-units", "nobody", "restart", "nginx.service"],
  ["org.freedesktop.systemd1.manage-unit-files", "autoheal", "restart", "nginx.service"],
  ["org.freedesktop.systemd1.reload-daemon", "autoheal", undefined, undefined],
];
for (const [id, user, verb, unit] of cases) {
  const action = { id, lookup: (k) => ({ verb, unit })[k] };
  let result = null;
  for (const r of rules) { result = r(action, { user }); if (result !== null && result !== undefined) break; }
  console.log(`${id} ${user} ${verb} ${unit} => ${result === "yes" ? "yes" : "no"}`);
}
JS
decisions=$(node "$work/eval.js" "$rule")
check "autoheal may restart nginx.service" grep -qx 'org.freedesktop.systemd1.manage-units autoheal restart nginx.service => yes' <<<"$decisions"
check "autoheal may restart worker@1.service" grep -qx 'org.freedesktop.systemd1.manage-units autoheal restart worker@1.service => yes' <<<"$decisions"
check "nothing else is allowed (stop, start, other units, other users, other actions)" \
  is "$(grep -c '=> yes$' <<<"$decisions")" 2

finish "systemd unit"
