# Shared by packaging/check.sh and packaging/tests/*.sh (sourced, not run).
# shellcheck shell=bash

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export repo
failures=0

step() { printf '\n==> %s\n' "$*"; }
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
# check DESCRIPTION COMMAND...: passes when COMMAND succeeds. Its stdout is dropped; what it
# says on stderr (why it failed) is shown.
check() {
  local what=$1
  shift
  if "$@" >/dev/null; then pass "$what"; else fail "$what"; fi
}
# not COMMAND...: succeeds when COMMAND fails (for checks that must see a failure).
not() { ! "$@"; }
# is GOT WANT
is() { [ "$1" = "$2" ] || { echo "    expected '$2', got '$1'" >&2; return 1; }; }
# finish NAME: exits non-zero when any check failed.
finish() {
  if [ "$failures" -gt 0 ]; then
    printf '%s: %d check(s) failed\n' "$1" "$failures"
    exit 1
  fi
  printf '%s: all checks passed\n' "$1"
}

# The Python tools (cfn-lint, parliament) live in a venv under target/ so nothing is installed
# system-wide and the versions are the ones pinned here.
venv=$repo/target/packaging-venv
ensure_venv() {
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  # Pinned versions already present: pip answers from the venv without the network.
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/packaging/requirements.txt"
}
