#!/usr/bin/env bash
# Every packaging gate; exits non-zero when any fails. Installs what it needs when missing (apt
# for the tools, a venv under target/ for cfn-lint and parliament).
#
#   packaging/check.sh            run every gate
#   packaging/check.sh --render   rewrite packaging/iam/*.json and the ECS task definition from
#                                 the CloudFormation template (after editing the template)
#
# Gates: shellcheck on every script here; the systemd unit (verify without warnings, exposure
# <= 2.0, the polkit allowlist); the SSM Distributor package (build, manifest and checksums,
# install / reinstall / upgrade / uninstall / purge into a temporary root); IAM (parliament
# silent, task role == COORDINATOR_ACTIONS); CloudFormation (cfn-lint: no errors, no warnings);
# the coordinator image and task definition (structural: non-root, distroless, no baked secrets).
# The agent in the package is target/release-agent/autoheal-agent when built, else a stub script.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
cd "$repo"

# command -> Debian package, installed only when the command is missing.
need=()
for pair in shellcheck:shellcheck systemd-analyze:systemd zip:zip unzip:unzip jq:jq node:nodejs; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "missing ${need[*]}: apt-get install them (needs root)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ensure_venv

if [ "${1:-}" = --render ]; then
  "$venv/bin/python" packaging/render.py render
  exit 0
fi

step "shellcheck"
mapfile -t scripts < <(
  { find packaging -name '*.sh' -type f; grep -rlE '^#!(/usr/bin/env bash|/bin/(ba)?sh)' packaging --exclude-dir=__pycache__; } |
    LC_ALL=C sort -u
)
if shellcheck -x "${scripts[@]}"; then pass "shellcheck: ${#scripts[@]} scripts clean"; else fail "shellcheck"; fi

agent_bin=()
if [ -x target/release-agent/autoheal-agent ]; then agent_bin=(target/release-agent/autoheal-agent); fi

gates=(
  "packaging/tests/systemd-unit.sh"
  "packaging/tests/ssm-package.sh ${agent_bin[*]:-}"
  "packaging/tests/iam.sh"
  "packaging/tests/cloudformation.sh"
  "packaging/tests/coordinator-image.sh"
)
failed_gates=()
for g in "${gates[@]}"; do
  # shellcheck disable=SC2086 # word splitting of the optional binary argument is wanted
  if ! bash $g; then failed_gates+=("${g%% *}"); fi
done

printf '\n'
if [ "$failures" -gt 0 ] || [ ${#failed_gates[@]} -gt 0 ]; then
  printf 'packaging: FAILED: %s\n' "${failed_gates[*]:-shellcheck}"
  exit 1
fi
printf 'packaging: %d gates passed (shellcheck + %d)\n' $((${#gates[@]} + 1)) ${#gates[@]}
