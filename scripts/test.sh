#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine too: installs what's missing, then lint, build, test.
#   scripts/test.sh            everything
#   scripts/test.sh -- ARGS    extra arguments for `cargo test` (e.g. a test name)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "one TLS stack: no duplicate rustls, hyper or h2 in the tree"
dups=$(cargo tree --workspace -d -e normal --depth 0 2>/dev/null | grep -E '^(rustls|hyper|h2|tokio-rustls|aws-lc-rs|ring) v' || true)
if [ -n "$dups" ]; then
  echo "duplicate TLS/HTTP crates:"; echo "$dups"; exit 1
fi
if cargo tree --workspace -e normal -i ring 2>/dev/null | grep -q '^ring v'; then
  echo "ring is in the tree: exactly one crypto provider (aws-lc-rs) is allowed"; exit 1
fi

step "layers: no import cycle between the top-level modules of any crate"
python3 scripts/check-layers.py
python3 -m unittest discover -s scripts/tests -q

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build binaries (the end-to-end tests run them as real processes)"
cargo build --workspace --bins

step "packaging gates (systemd, SSM package, IAM, CloudFormation, image)"
packaging/check.sh

step "rehearsal: the shipped stack run as shipped (two coordinator tasks on moto, the agent package under systemd-nspawn)"
scripts/rehearsal.sh

step "shellcheck (scripts)"
shellcheck scripts/*.sh .ci/run

step "test"
shift_args=()
if [ "${1:-}" = "--" ]; then shift; shift_args=("$@"); fi
cargo test --workspace ${shift_args[@]+"${shift_args[@]}"}
