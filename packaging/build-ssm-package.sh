#!/usr/bin/env bash
# Builds the SSM Distributor package for the agent: one zip per CPU architecture (the same zip
# serves every Linux distribution in the manifest) and manifest.json with each zip's SHA-256.
#
#   packaging/build-ssm-package.sh [--out DIR] [--version V] [--allow-stub] [X86_64_BIN [ARM64_BIN]]
#
# X86_64_BIN defaults to target/release-agent/autoheal-agent (`cargo build --profile release-agent -p autoheal-agent`;
# pass target/x86_64-unknown-linux-musl/release-agent/autoheal-agent for the static build).
# ARM64_BIN defaults to the first of target/aarch64-unknown-linux-{musl,gnu}/release-agent/autoheal-agent
# that exists; without one the package is x86_64 only. Each binary must be an ELF file for its architecture;
# --allow-stub accepts any file (the packaging tests use a shell script instead of a release build).
# The zips are reproducible: fixed timestamps and file order.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/target/ssm-package
version=
allow_stub=false
bins=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --allow-stub) allow_stub=true; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "build-ssm-package: unknown option $1" >&2; exit 2 ;;
    *) bins+=("$1"); shift ;;
  esac
done
if [ ${#bins[@]} -gt 2 ]; then echo "build-ssm-package: at most two binaries" >&2; exit 2; fi
x86_bin=${bins[0]:-$repo/target/release-agent/autoheal-agent}
arm_bin=${bins[1]:-}
for t in musl gnu; do
  if [ -z "$arm_bin" ] && [ -f "$repo/target/aarch64-unknown-linux-$t/release-agent/autoheal-agent" ]; then
    arm_bin=$repo/target/aarch64-unknown-linux-$t/release-agent/autoheal-agent
  fi
done
if [ -z "$version" ]; then
  version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
fi
[ -n "$version" ] || { echo "build-ssm-package: no version (Cargo.toml has none; pass --version)" >&2; exit 2; }

# e_machine of an ELF file, or "stub" when it is not ELF.
elf_machine() {
  if [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" != '177ELF' ]; then echo stub; return; fi
  case $(od -An -tu2 -j18 -N2 "$1" | tr -d ' ') in
    62) echo x86_64 ;;
    183) echo arm64 ;;
    *) echo other ;;
  esac
}
check_bin() { # PATH ARCH
  [ -f "$1" ] || { echo "build-ssm-package: $1 not found (cargo build --profile release-agent -p autoheal-agent)" >&2; exit 1; }
  local m
  m=$(elf_machine "$1")
  if [ "$m" = stub ] && [ "$allow_stub" = true ]; then return; fi
  if [ "$m" != "$2" ]; then
    echo "build-ssm-package: $1 is not a $2 ELF binary (found: $m)" >&2
    exit 1
  fi
}

rm -rf "$out"
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# make_zip ARCH BIN: writes $out/autoheal-agent-linux-ARCH.zip
make_zip() {
  local bin=$2 dir=$stage/$1 name=autoheal-agent-linux-$1.zip
  mkdir -p "$dir"
  install -m 0755 "$bin" "$dir/autoheal-agent"
  install -m 0755 "$repo/packaging/ssm/install.sh" "$repo/packaging/ssm/uninstall.sh" \
    "$repo/packaging/ssm/update.sh" "$repo/packaging/systemd/autoheal-agent-allow-restarts" "$dir/"
  install -m 0644 "$repo/packaging/systemd/autoheal-agent.service" "$repo/packaging/ssm/agent.toml" "$dir/"
  find "$dir" -exec touch -h -d '2000-01-01 00:00:00 UTC' {} +
  (cd "$dir" && LC_ALL=C find . -type f | LC_ALL=C sort | sed 's#^\./##' | TZ=UTC zip -q -X -@ "$out/$name")
}

check_bin "$x86_bin" x86_64
archs=(x86_64)
make_zip x86_64 "$x86_bin"
if [ -n "$arm_bin" ]; then
  check_bin "$arm_bin" arm64
  archs+=(arm64)
  make_zip arm64 "$arm_bin"
fi

# The manifest: the committed template, with this version, only the architectures built, and
# the SHA-256 of each zip.
sums='{}'
for a in "${archs[@]}"; do
  f=autoheal-agent-linux-$a.zip
  sums=$(jq --arg f "$f" --arg s "$(sha256sum "$out/$f" | cut -d' ' -f1)" '. + {($f): $s}' <<<"$sums")
done
jq --arg v "$version" --argjson sums "$sums" '
  .version = $v
  | .packages |= map_values(map_values(with_entries(select(.value.file as $f | $sums | has($f)))))
  | .files = ($sums | with_entries(.value = {checksums: {sha256: .value}}))
' "$repo/packaging/ssm/manifest.json" >"$out/manifest.json"

echo "build-ssm-package: wrote $out/manifest.json (version $version) for: ${archs[*]}"
