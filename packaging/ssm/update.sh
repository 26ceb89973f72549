#!/usr/bin/env bash
# SSM Distributor's in-place update: the install is already an idempotent upgrade.
set -euo pipefail
exec "$(cd "$(dirname "$0")" && pwd)/install.sh" "$@"
