#!/usr/bin/env bash
# The coordinator image, checked without a Docker engine: the Dockerfile's runtime stages are
# distroless and non-root with no secrets baked in; tls-init writes what ECS hands it and
# refuses to run half-configured; the container health check is the same in the image and the
# task definition; and the example configs are accepted by the real binaries when a build is
# there (scripts/test.sh builds them first).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$(dirname "$0")/../lib.sh"
dockerfile=$repo/packaging/coordinator/Dockerfile
taskdef=$repo/packaging/coordinator/ecs-task-definition.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "Dockerfile (structural: no engine here)"
# stage FILE NAME: the instructions of one build stage, continuation lines joined.
stage() {
  sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | grep -vE '^[[:space:]]*(#|$)' |
    awk -v want="$2" 'toupper($1) == "FROM" { cur = (tolower($NF) == want && tolower($(NF-1)) == "as") } cur'
}
base() { stage "$1" "$2" | awk 'NR == 1 { print $2 }'; }
last_user() { stage "$1" "$2" | awk 'toupper($1) == "USER" { u = $2 } END { print u }'; }
nonroot_stage() { # FILE STAGE
  local u
  u=$(last_user "$1" "$2")
  case ${u%%:*} in
    "" | 0 | root) echo "    stage $2 runs as '${u:-root (no USER)}'" >&2; return 1 ;;
  esac
}
distroless_stage() { # FILE STAGE
  [[ $(base "$1" "$2") == gcr.io/distroless/* ]] || { echo "    stage $2 is FROM $(base "$1" "$2")" >&2; return 1; }
}
no_baked_secrets() { # FILE: no ENV at all, no secret-looking ARG, nothing fetched with ADD
  local bad
  bad=$(grep -nEi '^[[:space:]]*(ENV[[:space:]]|ARG[[:space:]]+[A-Z_]*(SECRET|PASSWORD|TOKEN|KEY|CREDENTIAL)|ADD[[:space:]]+https?:)' "$1" || true)
  [ -z "$bad" ] || { echo "    $bad" >&2; return 1; }
}
for s in coordinator tls-init; do
  check "stage $s exists" test -n "$(stage "$dockerfile" "$s")"
  check "stage $s: distroless base ($(base "$dockerfile" "$s"))" distroless_stage "$dockerfile" "$s"
  check "stage $s: runs as a non-root user ($(last_user "$dockerfile" "$s"))" nonroot_stage "$dockerfile" "$s"
  check "stage $s: ENTRYPOINT in exec form" \
    is "$(stage "$dockerfile" "$s" | grep -c '^ENTRYPOINT \[')" 1
done
check "no secrets baked in (no ENV, no secret ARG, no remote ADD)" no_baked_secrets "$dockerfile"
check "coordinator exposes 7443" grep -qx 'EXPOSE 7443/tcp' "$dockerfile"
check "the files the Dockerfile copies exist" \
  test -f "$repo/$(sed -n 's/^COPY .* \(packaging\/[^ ]*\) .*/\1/p' "$dockerfile")"
# ...and these checks can fail.
sed 's/^USER 65532:65532$/USER root/' "$dockerfile" >"$work/Dockerfile.root"
check "non-root check catches USER root" not nonroot_stage "$work/Dockerfile.root" coordinator 2>/dev/null
sed '/^USER /d' "$dockerfile" >"$work/Dockerfile.nouser"
check "non-root check catches a missing USER" not nonroot_stage "$work/Dockerfile.nouser" coordinator 2>/dev/null
printf 'ENV AUTOHEAL_KEY=abc\n' >>"$work/Dockerfile.root"
check "secret check catches an ENV" not no_baked_secrets "$work/Dockerfile.root" 2>/dev/null
sed 's#^FROM gcr.io/distroless/cc-debian12:nonroot AS coordinator#FROM debian:bookworm AS coordinator#' "$dockerfile" >"$work/Dockerfile.debian"
check "base check catches a full distribution" not distroless_stage "$work/Dockerfile.debian" coordinator 2>/dev/null

step "health check: the same in the image and in the task definition"
image_hc=$(stage "$dockerfile" coordinator | sed -n 's/^HEALTHCHECK .*CMD \(\[.*\]\)$/\1/p' | jq -c .)
task_hc=$(jq -c '.containerDefinitions[] | select(.name == "coordinator") | .healthCheck.command[1:]' "$taskdef")
check "HEALTHCHECK and task healthCheck run $image_hc" is "$task_hc" "$image_hc"
check "task healthCheck uses exec form (CMD, no shell in the image)" \
  is "$(jq -r '.containerDefinitions[] | select(.name == "coordinator") | .healthCheck.command[0]' "$taskdef")" CMD
check "task definition: secrets only through valueFrom, no environment" \
  is "$(jq '[.containerDefinitions[] | has("environment")] | any' "$taskdef")" false

step "tls-init"
tls_init=$repo/packaging/coordinator/tls-init.sh
mkdir -p "$work/run"
env AUTOHEAL_DIR="$work/run" AUTOHEAL_CONFIG='listen = "0.0.0.0:7443"' AUTOHEAL_CA=CA AUTOHEAL_CERT=CERT \
  AUTOHEAL_KEY=$'-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----' sh "$tls_init" >/dev/null
check "writes the four files, 0600" \
  is "$(cd "$work/run" && stat -c '%n %a' ./* | LC_ALL=C sort | tr '\n' ' ')" "./ca.pem 600 ./coordinator-key.pem 600 ./coordinator.pem 600 ./coordinator.toml 600 "
check "the key arrives intact" \
  is "$(cat "$work/run/coordinator-key.pem")" $'-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----'
mkdir -p "$work/run2"
check "refuses to run without the key" \
  not env AUTOHEAL_DIR="$work/run2" AUTOHEAL_CONFIG=x AUTOHEAL_CA=x AUTOHEAL_CERT=x sh "$tls_init" 2>/dev/null
check "and then writes nothing" is "$(find "$work/run2" -type f | wc -l)" 0

step "example configs against the real binaries"
bin_dir=""
for d in "$repo/target/debug" "$repo/target/release"; do
  if [ -x "$d/autoheal-coordinator" ] && [ -x "$d/autohealctl" ] && [ -x "$d/autoheal-agent" ]; then bin_dir=$d; break; fi
done
if [ -z "$bin_dir" ]; then
  echo "  skip  no build in target/ (cargo build --workspace --bins): example configs not checked"
else
  check "agent: check-config packaging/ssm/agent.toml" "$bin_dir/autoheal-agent" check-config "$repo/packaging/ssm/agent.toml"
  "$bin_dir/autohealctl" certs init "$work/pki" --trust-domain autoheal.example.com >/dev/null
  cp "$repo/packaging/coordinator/coordinator.toml" "$work/pki/"
  check "coordinator: check-config packaging/coordinator/coordinator.toml (with a dev PKI)" \
    "$bin_dir/autoheal-coordinator" check-config "$work/pki/coordinator.toml"
  printf 'bogus = 1\n' >"$work/bad.toml"
  check "check-config exits 64 on a bad config" \
    is "$("$bin_dir/autoheal-coordinator" check-config "$work/bad.toml" >/dev/null 2>&1; echo $?)" 64
fi

finish "coordinator image"
