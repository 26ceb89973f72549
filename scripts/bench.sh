#!/usr/bin/env bash
# autoheal's benchmarks (issue 9): installs the peers (monit from Debian, supervisord from PyPI),
# builds release binaries, raises the file-descriptor limit and runs the driver.
#
#   scripts/bench.sh                       everything (`bench all`), ~20 minutes on 2 cores
#   scripts/bench.sh ingest --agents 20000 one benchmark, with its options
#   BENCH_SKIP_BUILD=1 scripts/bench.sh …  use the release binaries already built
#
# Not part of CI: figures are ratios against baselines run in the same invocation, but they
# still want a quiet machine. Results go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v monit >/dev/null; then
  apt-get install -y monit || { apt-get update && apt-get install -y monit; }
fi
if ! command -v supervisord >/dev/null; then
  pip install supervisor
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
python3 -c 'import moto' 2>/dev/null || scripts/setup.sh

if [ "${BENCH_SKIP_BUILD:-}" != 1 ]; then
  cargo build --release --workspace --bins
  # The agent build the SSM package ships (opt-level s, fat LTO): footprint and heal measure it.
  cargo build --profile release-agent -p autoheal-agent
fi

# 10k+ agents: one socket each in the load generator and in the coordinator.
# The hard limit caps it (20000 in this container: no CAP_SYS_RESOURCE to go higher).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "ulimit -n: $(ulimit -n)"

if [ $# -eq 0 ]; then set -- all; fi
exec target/release/bench "$@"
