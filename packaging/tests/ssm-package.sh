#!/usr/bin/env bash
# The SSM Distributor package: build it, check the zips and the manifest, then install, install
# again, upgrade over an operator's config, uninstall twice, reinstall and purge, all into a
# temporary root with systemctl, useradd and userdel stubbed (they record their calls).
#
#   packaging/tests/ssm-package.sh [AGENT_BINARY]   (default: a stub script)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$(dirname "$0")/../lib.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Two "releases" of the agent: a real binary when given, else stubs that say which one they are.
mkdir -p "$work/v1" "$work/v2"
if [ -n "${1:-}" ]; then
  cp "$1" "$work/v1/autoheal-agent"
  { cat "$1"; printf 'v2'; } >"$work/v2/autoheal-agent" # a different file, still the same ELF
  # No aarch64 build here: the arm64 slot gets a stub (the real x86_64 binary can't stand in,
  # the build script checks each binary's architecture).
  for v in v1 v2; do
    printf '#!/bin/sh\necho "autoheal-agent %s arm64 (stub)"\n' "$v" >"$work/$v/autoheal-agent-arm64"
  done
  stub=(--allow-stub)
else
  printf '#!/bin/sh\necho "autoheal-agent %s (stub)"\n' v1 >"$work/v1/autoheal-agent"
  printf '#!/bin/sh\necho "autoheal-agent %s (stub)"\n' v2 >"$work/v2/autoheal-agent"
  stub=(--allow-stub)
fi
chmod +x "$work"/v*/autoheal-agent

# arm64_of VERSION: the binary for the arm64 slot.
arm64_of() {
  if [ -f "$work/$1/autoheal-agent-arm64" ]; then echo "$work/$1/autoheal-agent-arm64"; else echo "$work/$1/autoheal-agent"; fi
}

step "build the package"
for v in v1 v2; do
  "$repo/packaging/build-ssm-package.sh" ${stub[@]+"${stub[@]}"} --out "$work/out-$v" \
    "$work/$v/autoheal-agent" "$(arm64_of "$v")" >/dev/null
done
out=$work/out-v1
check "build writes manifest.json and a zip per architecture" \
  test -f "$out/manifest.json" -a -f "$out/autoheal-agent-linux-x86_64.zip" -a -f "$out/autoheal-agent-linux-arm64.zip"

# verify_manifest DIR: schema 2.0, every referenced file present and listed, checksums right.
verify_manifest() {
  local dir=$1 m=$1/manifest.json f want got ok=0
  [ "$(jq -r .schemaVersion "$m")" = 2.0 ] || { echo "    schemaVersion is not 2.0" >&2; ok=1; }
  [ -n "$(jq -r '.version // empty' "$m")" ] || { echo "    no version" >&2; ok=1; }
  for f in $(jq -r '[.packages[][][].file] | unique[]' "$m"); do
    jq -e --arg f "$f" '.files | has($f)' "$m" >/dev/null || { echo "    $f is used but not in files" >&2; ok=1; }
  done
  for f in $(jq -r '.files | keys[]' "$m"); do
    jq -e --arg f "$f" '[.packages[][][].file] | index($f)' "$m" >/dev/null || { echo "    $f is in files but no platform uses it" >&2; ok=1; }
    want=$(jq -r --arg f "$f" '.files[$f].checksums.sha256' "$m")
    if [ ! -f "$dir/$f" ]; then echo "    $f missing" >&2; ok=1; continue; fi
    got=$(sha256sum "$dir/$f" | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "    $f: manifest says ${want:-nothing}, file is $got" >&2; ok=1; }
  done
  return $ok
}
check "manifest: schema 2.0, files and platforms agree, SHA-256 of every zip matches" verify_manifest "$out"
check "manifest covers x86_64 and arm64 on Amazon Linux, RHEL and Ubuntu" \
  jq -e '[.packages.amazon._any, .packages.redhat._any, .packages.ubuntu._any] | all(has("x86_64") and has("arm64"))' "$out/manifest.json"
# The check above must be able to fail: a zip changed after the build is caught.
cp -r "$out" "$work/tampered"
echo tampered >>"$work/tampered/autoheal-agent-linux-x86_64.zip"
check "manifest check catches a zip changed after the build" not verify_manifest "$work/tampered" 2>/dev/null
"$repo/packaging/build-ssm-package.sh" ${stub[@]+"${stub[@]}"} --out "$work/out-x86" "$work/v1/autoheal-agent" >/dev/null
check "an x86_64-only build lists only x86_64 in the manifest" \
  jq -e '([.packages[][] | keys[]] | unique) == ["x86_64"] and (.files | keys) == ["autoheal-agent-linux-x86_64.zip"]' "$work/out-x86/manifest.json"
"$repo/packaging/build-ssm-package.sh" ${stub[@]+"${stub[@]}"} --out "$work/out-again" \
  "$work/v1/autoheal-agent" "$(arm64_of v1)" >/dev/null
check "the build is reproducible (same inputs, same SHA-256)" \
  cmp -s "$out/manifest.json" "$work/out-again/manifest.json"
printf '#!/bin/sh\n' >"$work/not-elf"
chmod +x "$work/not-elf"
check "build refuses a non-ELF binary without --allow-stub" \
  not "$repo/packaging/build-ssm-package.sh" --out "$work/out-bad" "$work/not-elf" 2>/dev/null

expected="agent.toml autoheal-agent autoheal-agent-allow-restarts autoheal-agent.service install.sh uninstall.sh update.sh"
zip_files() { unzip -Z1 "$1" | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//'; }
check "zip holds exactly: $expected" is "$(zip_files "$out/autoheal-agent-linux-x86_64.zip")" "$expected"
check "scripts and binary are executable inside the zip" \
  is "$(unzip -Z "$out/autoheal-agent-linux-x86_64.zip" | grep -cE '^-rwxr-xr-x .* (install\.sh|uninstall\.sh|update\.sh|autoheal-agent|autoheal-agent-allow-restarts)$')" 5

step "install, upgrade and uninstall into a temporary root"
root=$work/root
calls=$work/calls.log
mkdir -p "$root/etc" "$work/bin" "$work/pkg-v1" "$work/pkg-v2"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
: >"$calls"
unzip -q "$out/autoheal-agent-linux-x86_64.zip" -d "$work/pkg-v1"
unzip -q "$work/out-v2/autoheal-agent-linux-x86_64.zip" -d "$work/pkg-v2"

# Stubs: record the call; useradd/userdel edit the temp root's passwd and group like the real ones.
cat >"$work/bin/systemctl" <<STUB
#!/bin/sh
echo "systemctl \$*" >>"$calls"
STUB
cat >"$work/bin/useradd" <<STUB
#!/bin/sh
echo "useradd \$*" >>"$calls"
for last; do :; done
echo "\$last:x:998:998:autoheal agent:/nonexistent:/usr/sbin/nologin" >>"$root/etc/passwd"
echo "\$last:x:998:" >>"$root/etc/group"
STUB
cat >"$work/bin/userdel" <<STUB
#!/bin/sh
echo "userdel \$*" >>"$calls"
for last; do :; done
sed -i "/^\$last:/d" "$root/etc/passwd" "$root/etc/group"
STUB
chmod +x "$work/bin/"*

run() { # SCRIPT [VAR=VALUE...]: a package script as SSM would run it, in the temp root
  local script=$1
  shift
  env "$@" DESTDIR="$root" PATH="$work/bin:$PATH" bash "$script" >>"$work/install.log" 2>&1
}
count() { grep -cxF -- "$1" "$calls" || true; }
mode_owner() { stat -c '%a %u:%g' "$1"; }
me=$(id -u)
owner() { # expected owner, or nothing to compare when not root (no chown possible)
  if [ "$me" -eq 0 ]; then echo "$1"; else stat -c '%u:%g' "$2"; fi
}
unit=autoheal-agent.service

check "first install succeeds" run "$work/pkg-v1/install.sh"
check "useradd --system, no home, no login, for autoheal" \
  is "$(grep '^useradd' "$calls")" "useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin --comment autoheal agent --root $root autoheal"
check "binary installed 0755 root:root" is "$(mode_owner "$root/usr/local/bin/autoheal-agent")" "755 $(owner 0:0 "$root/usr/local/bin/autoheal-agent")"
check "binary is release v1" cmp -s "$root/usr/local/bin/autoheal-agent" "$work/v1/autoheal-agent"
check "unit installed 0644 and identical to packaging/systemd" cmp -s "$root/etc/systemd/system/$unit" "$repo/packaging/systemd/$unit"
check "unit mode 0644" is "$(stat -c %a "$root/etc/systemd/system/$unit")" 644
check "polkit helper installed 0755" is "$(stat -c %a "$root/usr/local/sbin/autoheal-agent-allow-restarts")" 755
check "/etc/autoheal 0750 root:autoheal" is "$(mode_owner "$root/etc/autoheal")" "750 $(owner 0:998 "$root/etc/autoheal")"
check "/etc/autoheal/tls 0750 root:autoheal" is "$(mode_owner "$root/etc/autoheal/tls")" "750 $(owner 0:998 "$root/etc/autoheal/tls")"
check "starter config written 0640 root:autoheal" is "$(mode_owner "$root/etc/autoheal/agent.toml")" "640 $(owner 0:998 "$root/etc/autoheal/agent.toml")"
check "starter config is the packaged one" cmp -s "$root/etc/autoheal/agent.toml" "$repo/packaging/ssm/agent.toml"
rule=$root/etc/polkit-1/rules.d/50-autoheal-agent.rules
check "polkit rule written 0644" is "$(stat -c %a "$rule")" 644
check "polkit rule allows no unit yet" grep -qxF '    var units = [];' "$rule"
check "systemctl daemon-reload, enable, restart (in that order)" \
  is "$(grep '^systemctl' "$calls" | tr '\n' ';')" "systemctl daemon-reload;systemctl enable $unit;systemctl restart $unit;"

snapshot() { (cd "$root" && find . -printf '%p %m %u:%g %s\n' | LC_ALL=C sort && find . -type f -exec sha256sum {} + | LC_ALL=C sort); }
before=$(snapshot)
check "second install succeeds" run "$work/pkg-v1/install.sh"
check "second install: no second useradd" is "$(grep -c '^useradd' "$calls")" 1
check "second install: every file, mode and owner unchanged" is "$(snapshot)" "$before"
check "second install: restarted again" is "$(count "systemctl restart $unit")" 2

# An operator's config, keys dropped in with loose modes, then the upgrade.
cat >"$root/etc/autoheal/agent.toml" <<'TOML'
[services.web]
unit = "nginx"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1/healthz"
TOML
chmod 0644 "$root/etc/autoheal/agent.toml"
echo key >"$root/etc/autoheal/tls/agent-key.pem"
chmod 0644 "$root/etc/autoheal/tls/agent-key.pem"
cp "$root/etc/autoheal/agent.toml" "$work/operator.toml"
check "upgrade to v2 succeeds" run "$work/pkg-v2/install.sh"
check "upgrade: binary is v2" cmp -s "$root/usr/local/bin/autoheal-agent" "$work/v2/autoheal-agent"
check "upgrade: the operator's config is kept" cmp -s "$root/etc/autoheal/agent.toml" "$work/operator.toml"
check "upgrade: config back to 0640 root:autoheal" is "$(mode_owner "$root/etc/autoheal/agent.toml")" "640 $(owner 0:998 "$root/etc/autoheal/agent.toml")"
check "upgrade: TLS key 0600 owned by autoheal" is "$(mode_owner "$root/etc/autoheal/tls/agent-key.pem")" "600 $(owner 998:998 "$root/etc/autoheal/tls/agent-key.pem")"
check "upgrade: polkit rule allows exactly nginx.service" grep -qxF '    var units = ["nginx.service"];' "$rule"
check "upgrade: restarted into v2" is "$(count "systemctl restart $unit")" 3
check "no temporary files left behind" is "$(find "$root" -name '.autoheal.*' -o -name '.50-autoheal-agent.rules.*' | wc -l)" 0

check "uninstall succeeds" run "$work/pkg-v2/uninstall.sh"
check "uninstall: stopped and disabled" is "$(count "systemctl disable --now $unit")" 1
for f in "$root/usr/local/bin/autoheal-agent" "$root/usr/local/sbin/autoheal-agent-allow-restarts" "$root/etc/systemd/system/$unit" "$rule"; do
  check "uninstall: ${f#"$root"} removed" test ! -e "$f"
done
check "uninstall: config kept" cmp -s "$root/etc/autoheal/agent.toml" "$work/operator.toml"
check "uninstall: TLS key kept" test -f "$root/etc/autoheal/tls/agent-key.pem"
check "uninstall: user kept" grep -q '^autoheal:' "$root/etc/passwd"
check "second uninstall succeeds" run "$work/pkg-v2/uninstall.sh"
check "second uninstall: nothing left to stop" is "$(count "systemctl disable --now $unit")" 1

check "reinstall after uninstall succeeds" run "$work/pkg-v2/install.sh"
check "reinstall: the operator's config is still kept" cmp -s "$root/etc/autoheal/agent.toml" "$work/operator.toml"
check "reinstall: no new user" is "$(grep -c '^useradd' "$calls")" 1
check "purge succeeds" run "$work/pkg-v2/uninstall.sh" SSM_AUTOHEAL_PURGE=true
check "purge: /etc/autoheal removed" test ! -e "$root/etc/autoheal"
check "purge: userdel called once" is "$(count "userdel --root $root autoheal")" 1
check "purge: user gone from passwd" not grep -q '^autoheal:' "$root/etc/passwd"
check "purge: nothing of the agent left in the root" \
  is "$(cd "$root" && find . -type f | LC_ALL=C sort | tr '\n' ' ')" "./etc/group ./etc/passwd "
if [ "$failures" -gt 0 ]; then echo "  install log:"; sed 's/^/    /' "$work/install.log"; fi

finish "ssm package"
