#!/usr/bin/env bash
# Installs what the build, the tests and the demo need. Idempotent; safe to run on every call.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# promtool (Debian package prometheus) lints the /metrics scrapes in tests/tests/metrics.rs.
command -v promtool >/dev/null || need_apt+=(prometheus)
# The fleet web view's browser test (tests/tests/ui.rs): Debian's chromium, driven from node.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# The demo's IMDSv2 stand-in signs identity documents with `openssl smime` (scripts/demo/imds.py).
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)"; exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# moto server: the AWS API emulator the end-to-end tests run on loopback (with boto3, which the
# fixture scripts use to create fleets through the same API).
if ! python3 -c 'import moto.server, boto3, flask' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi

# playwright-core for tests/ui (no browser download: it drives /usr/bin/chromium), pinned by the
# lock file; reinstalled only when the lock file changed.
if [ ! -f tests/ui/node_modules/.package-lock.json ] \
  || [ tests/ui/package-lock.json -nt tests/ui/node_modules/.package-lock.json ]; then
  (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
fi
