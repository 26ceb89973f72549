#!/usr/bin/env bash
# The shipped stack, run as shipped, on this machine (root): the README's deployment, rehearsed.
#
#   scripts/rehearsal.sh [--config FILE] [--keep]
#
# 1. Renders the ECS task definition and the coordinator config from the CloudFormation template
#    (packaging/render.py); runs packaging/coordinator/tls-init.sh itself with the secrets the
#    task definition names; starts two coordinator tasks with exactly the definition's command,
#    user, volumes, read-only root and environment, each in its own network namespace (awsvpc:
#    one IP per task, 10.99.0.2 and .3) with its own hostname, against moto (the template's
#    DynamoDB table, an ASG behind an ALB target group) and a stand-in ECS metadata endpoint.
# 2. Builds the SSM Distributor package (packaging/build-ssm-package.sh) and installs it with its
#    own install.sh inside a real systemd: a debootstrapped Debian bookworm (cached under
#    target/rehearsal-root) booted with systemd-nspawn, sharing this machine's network.
# 3. Checks, one PASS/FAIL line each: one leader; followers' answers marked and redirecting to the
#    leader's task IP; the agent as user autoheal under the hardened unit, restarting a killed
#    demo-web.service through polkit and refused any other unit or verb; the sandbox (systemd-
#    analyze security, and a probe of each directive inside nspawn); SIGKILL of the leader and the
#    other replica leading within the lease TTL plus one pass, the agent following; upgrade of
#    the package (config and TLS kept, the agent restarted once, demo-web not restarted); an
#    escalation (demo-web cannot start) that the leader answers by deregistering and replacing the
#    instance in moto; uninstall (config and TLS kept, demo-web untouched).
#
# --config FILE rehearses FILE instead of the rendered config (e.g. an old shipped one, to see
# what the rehearsal catches). --standalone: the tasks say they belong to no ECS service (as with
# `aws ecs run-task`), so a coordinator can't tell from ECS that it has siblings. Exits non-zero
# when any check fails. --keep leaves the work dir.
# SC2317: functions run from traps and wait_for; SC2015: `check && pass || fail` is meant.
# shellcheck disable=SC2317,SC2015
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
# For ensure_venv and $venv (render.py reads the template with cfn-lint's loader); its pass and
# fail are replaced below. (Not followed by a plain `shellcheck scripts/*.sh`: it is checked with
# packaging/.)
# shellcheck disable=SC1091
. packaging/lib.sh
# shellcheck disable=SC2269,SC2154 # set by packaging/lib.sh
venv=$venv
here=$repo/scripts/rehearsal
config_file=
keep=false
service=autoheal-Service-rehearsal
while [ $# -gt 0 ]; do
  case $1 in
    --config) config_file=$(realpath "$2"); shift 2 ;;
    --keep) keep=true; shift ;;
    --standalone) service=; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "rehearsal: unknown argument $1" >&2; exit 2 ;;
  esac
done

started=$SECONDS
passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
phase() { printf '\n== %s (t=%ss)\n' "$*" $((SECONDS - started)); }
die() { fail "$*"; summary; }
summary() {
  printf '\nrehearsal: %d passed, %d failed in %ss\n' "$passed" "$failed" $((SECONDS - started))
  [ "$failed" -eq 0 ] || exit 1
  exit 0
}
# wait_for SECONDS COMMAND...: polls every 0.25 s until COMMAND succeeds.
wait_for() {
  local until=$((SECONDS + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 0.25
  done
}

[ "$(id -u)" -eq 0 ] || { echo "rehearsal: needs root (network namespaces, mounts, systemd-nspawn)" >&2; exit 2; }

phase "prerequisites"
need=()
for pair in debootstrap:debootstrap systemd-nspawn:systemd-container busybox:busybox unzip:unzip zip:zip jq:jq; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
    echo "rehearsal: cannot install ${need[*]}" >&2
    exit 2
  fi
fi
python3 -c 'import moto, boto3' 2>/dev/null || { echo "rehearsal: moto[server] missing: run scripts/setup.sh" >&2; exit 2; }
# The binaries cargo built, wherever its target folder is.
bin=${CARGO_TARGET_DIR:-target}/debug
for b in autoheal-coordinator autoheal-agent autohealctl; do
  [ -x "$bin/$b" ] || cargo build -q -p "$b" --bins || exit 2
done
ensure_venv

work=$(mktemp -d /tmp/autoheal-rehearsal.XXXXXX)
pids=()
nspawn_pid=
cleanup() {
  [ -z "$nspawn_pid" ] || { kill "$nspawn_pid" 2>/dev/null; wait "$nspawn_pid" 2>/dev/null; }
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  mountpoint -q "$work/root" && umount "$work/root"
  ip netns del ahr-a 2>/dev/null
  ip netns del ahr-b 2>/dev/null
  ip link del ahr0 2>/dev/null
  if [ "$keep" = true ]; then echo "rehearsal: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- 1. render ---------------------------------------------------------------------------------
phase "render the task definition and the config from the template"
"$venv/bin/python" packaging/render.py render --out "$work/rendered" >/dev/null || die "render.py render"
taskdef=$work/rendered/coordinator/ecs-task-definition.json
if cmp -s "$work/rendered/coordinator/coordinator.toml" packaging/coordinator/coordinator.toml; then
  pass "the shipped packaging/coordinator/coordinator.toml is the one rendered from the template"
else
  fail "packaging/coordinator/coordinator.toml differs from the template's rendering (packaging/check.sh --render)"
fi
shipped=${config_file:-$work/rendered/coordinator/coordinator.toml}
[ -z "$config_file" ] || echo "rehearsing $config_file instead of the rendered config"
# The operator's edits before `put-parameter`: dry_run off (step 9), rehearsal-speed timings.
python3 "$here/tune.py" <"$shipped" >"$work/config.toml"
trust_domain=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("trust_domain", "autoheal.local"))' "$work/config.toml")
lease_ttl=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("store", {}).get("lease_ttl", "15s").rstrip("s"))' "$work/config.toml")
pass_interval=1

# --- network: one namespace per task, a bridge standing in for the VPC ---------------------------
# Leftovers of a run that was killed before its cleanup.
ip netns del ahr-a 2>/dev/null
ip netns del ahr-b 2>/dev/null
ip link del ahr0 2>/dev/null
ip link add ahr0 type bridge && ip addr add 10.99.0.1/24 dev ahr0 && ip link set ahr0 up || die "bridge ahr0"
for t in a b; do
  ip=10.99.0.$([ $t = a ] && echo 2 || echo 3)
  ip netns add ahr-$t &&
    ip link add ahr-$t-h type veth peer name eth0 netns ahr-$t &&
    ip link set ahr-$t-h master ahr0 up &&
    ip -n ahr-$t addr add "$ip/24" dev eth0 &&
    ip -n ahr-$t link set eth0 up &&
    ip -n ahr-$t link set lo up &&
    ip -n ahr-$t route add default via 10.99.0.1 || die "network namespace ahr-$t"
done
ip_of() { [ "$1" = a ] && echo 10.99.0.2 || echo 10.99.0.3; }

# --- moto: the template's table, an ASG behind an ALB target group ------------------------------
phase "moto"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("10.99.0.1", 0)); print(s.getsockname()[1])'; }
moto_port=$(free_port)
python3 -m moto.server -H 10.99.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
moto=http://10.99.0.1:$moto_port
wait_for 30 python3 -c "import urllib.request; urllib.request.urlopen('$moto/moto-api/')" || die "moto did not start"
"$venv/bin/python" packaging/render.py table | python3 "$here/table.py" --endpoint "$moto" >/dev/null || die "state table from the template"
python3 tests/fixtures/moto_fleet.py --endpoint "$moto" --name web --size 3 >"$work/fleet.json" || die "moto fleet"
iid=$(jq -r '.instances[0].instance_id' "$work/fleet.json")
az=$(jq -r '.instances[0].availability_zone' "$work/fleet.json")
tg=$(jq -r '.target_group' "$work/fleet.json")
pass "moto: table $(jq -r .TableName <("$venv/bin/python" packaging/render.py table)) from the template, ASG web (3) behind $(basename "$tg"), the container is $iid"
md_port=$(free_port)
python3 "$here/ecs_metadata.py" --listen "10.99.0.1:$md_port" --service "$service" a=10.99.0.2 b=10.99.0.3 &
pids+=($!)

# --- PKI: a coordinator certificate for both task IPs, an agent one for the instance ------------
"$bin/autohealctl" certs init "$work/pki" --trust-domain "$trust_domain" --san 10.99.0.2 --san 10.99.0.3 \
  --instance "$iid" >/dev/null || die "autohealctl certs init"
ctl() { "$bin/autohealctl" --pki "$work/pki" --endpoint "$1:7443" "${@:2}"; }

# --- the tasks ---------------------------------------------------------------------------------
phase "two coordinator tasks"
image=$work/image
install -D -m 0755 "$bin/autoheal-coordinator" "$image/usr/local/bin/autoheal-coordinator"
install -D -m 0555 packaging/coordinator/tls-init.sh "$image/usr/local/bin/tls-init"
# Parameter Store and Secrets Manager, as the README's step 3 fills them.
cp "$work/config.toml" "$work/param-config.toml"
# secret NAME -> the file its valueFrom resolves to.
resolve_secret() {
  case $1 in
    *:parameter/autoheal/coordinator/config.toml) echo "$work/param-config.toml" ;;
    *:parameter/autoheal/coordinator/ca.pem) echo "$work/pki/ca.pem" ;;
    *:parameter/autoheal/coordinator/coordinator.pem) echo "$work/pki/coordinator.pem" ;;
    *:secret:autoheal/coordinator/tls-key-*) echo "$work/pki/coordinator-key.pem" ;;
    *) return 1 ;;
  esac
}
secrets=()
while IFS=$'\t' read -r name from; do
  f=$(resolve_secret "$from") || die "tls-init secret $name from $from: not what README step 3 creates"
  secrets+=(--secret "$name=$f")
done < <(jq -r '.containerDefinitions[] | select(.name == "tls-init") | .secrets[] | [.name, .valueFrom] | @tsv' "$taskdef")
# What ECS and Fargate add to every container's environment (the task role's credentials stand
# in for the credential endpoint; AWS_ENDPOINT_URL points the SDK at moto).
platform_env() {
  printf -- '--platform-env\0%s\0' "AWS_REGION=us-east-1" "AWS_DEFAULT_REGION=us-east-1" \
    "AWS_ACCESS_KEY_ID=testing" "AWS_SECRET_ACCESS_KEY=testing" "AWS_ENDPOINT_URL=$moto" \
    "AWS_EXECUTION_ENV=AWS_ECS_FARGATE" "ECS_CONTAINER_METADATA_URI_V4=http://10.99.0.1:$md_port/$1"
}
mkdir -p /run/autoheal /var/lib/autoheal
declare -A coord_pid
start_task() { # a|b
  local t=$1 vol=$work/task-$1 env=()
  mkdir -p "$vol/tls" "$vol/state"
  chown 65532:65532 "$vol/tls" "$vol/state"
  chmod 0700 "$vol/tls" "$vol/state"
  mapfile -d '' env < <(platform_env "$t")
  local common=(--taskdef "$taskdef" --netns "ahr-$t" --hostname "ip-$(ip_of "$t" | tr . -)" --volumes "$vol" --image "$image")
  if ! python3 "$here/task.py" "${common[@]}" --container tls-init "${secrets[@]}" -- busybox sh /usr/local/bin/tls-init \
    >"$vol/tls-init.log" 2>&1; then
    fail "task $t: tls-init: $(tail -1 "$vol/tls-init.log")"
    return 1
  fi
  python3 "$here/task.py" "${common[@]}" --container coordinator "${env[@]}" --command -- /usr/local/bin/autoheal-coordinator \
    >"$vol/stdout" 2>"$vol/stderr" &
  coord_pid[$t]=$!
  pids+=($!)
  # The container health check of the task definition, in the same namespaces.
  mapfile -t hc < <(jq -r '.containerDefinitions[] | select(.name == "coordinator") | .healthCheck.command[1:][]' "$taskdef")
  if python3 "$here/task.py" "${common[@]}" --container coordinator "${env[@]}" -- "${hc[@]}" >"$vol/health.log" 2>&1; then
    pass "task $t: tls-init wrote the files and the container health check passes"
  else
    fail "task $t: health check: $(tail -2 "$vol/health.log" | tr '\n' ' ')"
  fi
}
start_task a
start_task b
for t in a b; do
  if wait_for 20 grep -q 'listening on' "$work/task-$t/stdout"; then
    pass "task $t: $(cat "$work/task-$t/stdout") (the definition's command, user 65532, read-only root)"
  else
    fail "task $t did not start: $(grep -v '^\s*$' "$work/task-$t/stderr" | tail -2 | cut -c1-400)"
  fi
done

# leader_of: prints a|b for the replica that says it leads (exactly one), else fails.
is_leader() { [ "$(ctl "$(ip_of "$1")" --output json status 2>/dev/null | jq -r .leader)" = true ]; }
one_leader() {
  local n=0 who=
  for t in a b; do if is_leader $t; then n=$((n + 1)); who=$t; fi; done
  [ $n -eq 1 ] && echo $who
}
phase "one leader, followers marked, redirecting to the leader's task IP"
leader=
if wait_for $((lease_ttl + pass_interval + 5)) one_leader; then
  leader=$(one_leader)
  pass "exactly one replica leads: task $leader ($(ip_of "$leader"))"
else
  fail "not exactly one leader: a=$(is_leader a && echo leader || echo follower) b=$(is_leader b && echo leader || echo follower)"
fi
follower=
if [ -n "$leader" ]; then
  follower=$([ "$leader" = a ] && echo b || echo a)
  note=$(ctl "$(ip_of "$follower")" status 2>&1 >/dev/null)
  if [[ $note == *"answered by a follower (leader: $(ip_of "$leader"):7443)"* ]]; then
    pass "the follower's answer is marked and names the leader by its task IP: ${note#autohealctl: }"
  else
    fail "the follower's answer does not name the leader at $(ip_of "$leader"):7443: '$note'"
  fi
fi

# --- 2. the agent package under a real systemd --------------------------------------------------
phase "Debian bookworm under systemd-nspawn"
root_cache=$repo/target/rehearsal-root
if [ ! -f "$root_cache/.autoheal-rehearsal-root" ]; then
  rm -rf "$root_cache.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,polkitd,libpam-systemd,python3,iproute2 \
    bookworm "$root_cache.tmp" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap: $(tail -3 "$work/debootstrap.log")"
  echo bookworm-v1 >"$root_cache.tmp/.autoheal-rehearsal-root"
  mv "$root_cache.tmp" "$root_cache"
fi
# The cached root stays pristine: each run boots an overlay of it.
mkdir -p "$work/root" "$work/upper" "$work/ovl"
mount -t overlay overlay -o "lowerdir=$root_cache,upperdir=$work/upper,workdir=$work/ovl" "$work/root" || die "overlay on the cached root"
R=$work/root
echo "rehearsal" >"$R/etc/hostname"
: >"$R/tmp/rehearsal-host-marker"
cat >"$R/etc/systemd/system/demo-web.service" <<'UNIT'
[Unit]
Description=demo web service supervised by the autoheal agent
[Service]
ExecStart=/usr/bin/python3 -m http.server 18080 --bind 127.0.0.1 --directory /usr/share
# The agent heals it, not systemd.
Restart=no
[Install]
WantedBy=multi-user.target
UNIT
cp "$R/etc/systemd/system/demo-web.service" "$R/etc/systemd/system/other-web.service"
sed -i 's/18080/18081/; s/demo web service.*/a unit the agent may not touch/' "$R/etc/systemd/system/other-web.service"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sf ../demo-web.service "$R/etc/systemd/system/multi-user.target.wants/demo-web.service"
ln -sf ../other-web.service "$R/etc/systemd/system/multi-user.target.wants/other-web.service"
# README step 8, before the package: the agent's config and TLS files.
mkdir -p "$R/etc/autoheal/tls"
cp "$work/pki/ca.pem" "$R/etc/autoheal/tls/ca.pem"
cp "$work/pki/instance-$iid.pem" "$R/etc/autoheal/tls/agent.pem"
cp "$work/pki/instance-$iid-key.pem" "$R/etc/autoheal/tls/agent-key.pem"
# The agent is pointed at the follower (an NLB may pick either): it must follow the Redirect.
cat >"$R/etc/autoheal/agent.toml" <<TOML
[coordinator]
endpoints = ["$(ip_of "${follower:-a}"):7443"]
connect_timeout = "2s"
reconnect_initial = "200ms"
reconnect_max = "2s"

[tls]
ca = "tls/ca.pem"
cert = "tls/agent.pem"
key = "tls/agent-key.pem"

[identity]
instance_id = "$iid"
availability_zone = "$az"

[services.web]
unit = "demo-web.service"

[services.web.restart]
max_attempts = 2
window = "10m"
backoff_initial = "500ms"
backoff_max = "1s"
verify_timeout = "5s"
action_timeout = "10s"

[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:18080/"
interval = "1s"
timeout = "500ms"
failure_threshold = 2
TOML
install -D -m 0644 "$here/probe.py" "$R/usr/local/lib/autoheal-rehearsal/probe.py"

phase "build the Distributor package"
packaging/build-ssm-package.sh --out "$work/pkg-1" "$bin/autoheal-agent" >/dev/null || die "build-ssm-package.sh"
packaging/build-ssm-package.sh --out "$work/pkg-2" --version 0.1.1-rehearsal "$bin/autoheal-agent" >/dev/null || die "build-ssm-package.sh (upgrade)"
for v in 1 2; do
  mkdir -p "$R/root/pkg-$v" && unzip -q "$work/pkg-$v/autoheal-agent-linux-x86_64.zip" -d "$R/root/pkg-$v" || die "unzip package $v"
done
pass "Distributor package built ($(jq -r .version "$work/pkg-1/manifest.json") and $(jq -r .version "$work/pkg-2/manifest.json"), sha256 $(jq -r '.files[].checksums.sha256' "$work/pkg-1/manifest.json" | cut -c1-12)…)"

phase "boot"
mkdir -p /run/systemd/nspawn
# nspawn keeps its state in /run/systemd/nspawn: where /run is not a tmpfs, give it one.
if [ "$(stat -fc %T /run)" != tmpfs ] && ! mountpoint -q /run/systemd/nspawn; then
  mount -t tmpfs tmpfs /run/systemd/nspawn
fi
systemd-nspawn -D "$R" --register=no --keep-unit -b >"$work/boot.log" 2>&1 </dev/null &
nspawn_pid=$!
ct_pid() { pgrep -P "$nspawn_pid" | head -1; }
in_ct() { nsenter -t "$(ct_pid)" -m -u -i -p -C -- "$@"; }
booted() { [ -n "$(ct_pid)" ] && in_ct systemctl is-system-running 2>/dev/null | grep -qE '^(running|degraded)$'; }
if wait_for 60 booted; then
  pass "booted systemd $(in_ct systemctl --version | head -1 | awk '{print $2}') in nspawn ($(in_ct systemctl is-system-running))"
else
  tail -20 "$work/boot.log"
  die "the container did not boot"
fi
# The agent's last N log lines (JSON), as "LEVEL message detail; ...".
agent_log() {
  in_ct journalctl -u autoheal-agent.service -n "${1:-3}" -o cat --no-pager |
    jq -Rr 'fromjson? // {fields: {message: .}} | "\(.level // "") \(.fields.message) \(.fields.error // .fields.detail // .fields.reason // "")"' |
    cut -c1-200 | paste -sd ';' -
}
as_agent() { in_ct setpriv --reuid=autoheal --regid=autoheal --init-groups -- "$@"; }
prop() { in_ct systemctl show -P "$2" "$1"; }

phase "install (the package's own install.sh)"
if in_ct bash -c 'cd /root/pkg-1 && ./install.sh' >"$work/install-1.log" 2>&1; then
  pass "install.sh: $(tail -1 "$work/install-1.log")"
else
  fail "install.sh failed: $(tail -3 "$work/install-1.log" | tr '\n' ' ')"
fi
agent_up() { [ "$(prop autoheal-agent.service ActiveState)" = active ] && [ "$(prop autoheal-agent.service MainPID)" != 0 ]; }
if wait_for 10 agent_up; then
  apid=$(prop autoheal-agent.service MainPID)
  user=$(in_ct stat -c %U "/proc/$apid")
  caps=$(in_ct sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$apid/status")
  if [ "$user" = autoheal ] && [ "$caps" = 0000000000000000 ]; then
    pass "the agent runs as user $user with no capabilities (CapEff $caps) under the hardened unit"
  else
    fail "the agent runs as '$user' with CapEff $caps"
  fi
else
  fail "autoheal-agent.service is not running: $(agent_log 5)"
fi
connected_to() { # IP: the replica at IP says our instance's agent is connected
  [ "$(ctl "$1" --output json instance "$iid" 2>/dev/null | jq -r '.summary.connected // .connected')" = true ]
}
# "from -> to" of each Redirect the agent logged.
redirects() {
  in_ct journalctl -u autoheal-agent.service -o cat --no-pager |
    jq -Rr 'fromjson? | select(.fields.message == "redirected by the coordinator") | "\(.fields.from) -> \(.fields.to)"'
}
if [ -n "$leader" ] && wait_for 20 connected_to "$(ip_of "$leader")" &&
  redirects | grep -qx "$(ip_of "$follower"):7443 -> $(ip_of "$leader"):7443"; then
  pass "the agent, pointed at the follower, followed the Redirect ($(redirects | head -1)) and is connected to the leader"
else
  fail "the agent is not connected to a leader (pointed at $(ip_of "${follower:-a}")): $(agent_log 3)"
fi

phase "healing through polkit"
web_up() { [ "$(prop demo-web.service ActiveState)" = active ] && [ "$(prop demo-web.service MainPID)" != 0 ]; }
wait_for 10 web_up || fail "demo-web.service is not running before the test"
inv=$(prop demo-web.service InvocationID)
in_ct systemctl kill -s KILL demo-web.service
restarted() { web_up && [ "$(prop demo-web.service InvocationID)" != "$inv" ]; }
if wait_for 20 restarted; then
  pass "demo-web.service SIGKILLed: the agent restarted it (systemctl restart as autoheal, allowed by the polkit rule)"
else
  fail "demo-web.service was not restarted after SIGKILL: $(agent_log 5)"
fi
refused() { # what: as the agent's user, this systemctl call must be refused
  local out
  if out=$(as_agent systemctl --no-ask-password "$@" 2>&1); then
    fail "polkit allowed the agent's user: systemctl $*"
  else
    pass "polkit refuses the agent's user: systemctl $* ($(echo "$out" | head -1 | cut -c1-80))"
  fi
}
refused stop demo-web.service
refused start other-web.service
refused restart other-web.service
refused restart dbus.service
refused enable demo-web.service

phase "the sandbox inside nspawn"
sec=$(in_ct systemd-analyze security autoheal-agent.service --no-pager 2>&1)
exposure=$(echo "$sec" | sed -n 's/.*Overall exposure level for autoheal-agent.service: \([0-9.]*\).*/\1/p')
echo "$sec" | grep -E '^✗' | sed 's/^/        /' | head -20
if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
  pass "systemd-analyze security on the running unit: exposure $exposure (budget 2.0)"
else
  fail "systemd-analyze security: exposure '${exposure:-?}' (budget 2.0)"
fi
# The same [Service] sandbox, the probe as ExecStart: what each directive really does here.
in_ct bash -c 'sed -e "/^ExecStartPre=/d" -e "s#^ExecStart=.*#ExecStart=/usr/bin/python3 /usr/local/lib/autoheal-rehearsal/probe.py#" \
  -e "s/^Type=exec/Type=oneshot/" -e "/^Restart/d" /etc/systemd/system/autoheal-agent.service \
  >/etc/systemd/system/autoheal-sandbox-probe.service && systemctl daemon-reload'
in_ct systemctl start autoheal-sandbox-probe.service >/dev/null 2>&1
in_ct journalctl -u autoheal-sandbox-probe.service -o cat --no-pager >"$work/probe.log" 2>&1
grep -E '^(effective|NOT-effective) ' "$work/probe.log" | sed 's/^/        /'
not_effective=$(grep -c '^NOT-effective ' "$work/probe.log")
if grep -q '^effective NoNewPrivileges' "$work/probe.log"; then
  pass "sandbox probe ran under the unit's directives: $(grep -c '^effective ' "$work/probe.log") effective, $not_effective not effective in nspawn (listed in the README)"
else
  fail "sandbox probe did not run: $(tail -3 "$work/probe.log" | tr '\n' ' ')"
fi
grep -iE 'not supported|ignoring|failed to' <(in_ct journalctl -b --no-pager -o cat -u autoheal-agent.service) | sort -u | sed 's/^/        systemd: /' | head -10

# --- failover -----------------------------------------------------------------------------------
phase "SIGKILL the leader"
if [ -n "$leader" ]; then
  kill -KILL "${coord_pid[$leader]}"
  t0=$(date +%s.%N)
  bound=$((lease_ttl + pass_interval + 1))
  if wait_for "$bound" is_leader "$follower"; then
    took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    pass "task $follower leads ${took}s after the leader was SIGKILLed (lease TTL ${lease_ttl}s + one ${pass_interval}s pass + 1s polling)"
  else
    fail "task $follower does not lead ${bound}s after the leader was SIGKILLed"
  fi
  if wait_for 20 connected_to "$(ip_of "$follower")"; then
    pass "the agent followed: connected to the new leader $(ip_of "$follower") (Redirects the agent followed since the start: $(redirects | sort | uniq -c | awk '{ printf "%s%s× %s %s %s", (NR > 1 ? ", " : ""), $1, $2, $3, $4 }'); after the kill, the follower still sent it to the dead leader until the lease ran out)"
  else
    fail "the agent did not reach the new leader $(ip_of "$follower")"
  fi
  leader=$follower
  # ECS replaces the stopped task: it rejoins as a follower pointing at the new leader.
  old=$([ "$leader" = a ] && echo b || echo a)
  rm -rf "$work/task-$old"
  start_task "$old"
  not_leader() { ! is_leader "$1"; }
  if wait_for 20 grep -q 'listening on' "$work/task-$old/stdout" && wait_for 10 not_leader "$old"; then
    note=$(ctl "$(ip_of "$old")" status 2>&1 >/dev/null)
    [[ $note == *"leader: $(ip_of "$leader"):7443"* ]] &&
      pass "the replacement task $old follows and names the new leader" ||
      fail "the replacement task $old: '$note'"
  else
    fail "the replacement task $old did not start as a follower"
  fi
else
  fail "failover: skipped, there was no single leader"
fi

# --- upgrade ------------------------------------------------------------------------------------
phase "upgrade the package in place"
hashes() { in_ct bash -c 'sha256sum /etc/autoheal/agent.toml /etc/autoheal/tls/*; stat -c "%n %U:%G %a" /etc/autoheal /etc/autoheal/tls /etc/autoheal/tls/*'; }
starts() { in_ct journalctl -u autoheal-agent.service -o cat --no-pager | grep -c '^Started autoheal-agent'; }
before=$(hashes)
web_inv=$(prop demo-web.service InvocationID)
n0=$(starts)
if in_ct bash -c 'cd /root/pkg-2 && ./update.sh' >"$work/install-2.log" 2>&1 && wait_for 10 agent_up; then
  pass "update.sh (0.1.1-rehearsal): $(tail -1 "$work/install-2.log")"
else
  fail "update.sh: $(tail -3 "$work/install-2.log" | tr '\n' ' ')"
fi
[ "$(hashes)" = "$before" ] && pass "upgrade kept the config and TLS files (contents, owners, modes)" || fail "upgrade changed the config or TLS files"
n1=$(starts)
[ $((n1 - n0)) -eq 1 ] && pass "upgrade restarted the agent once" || fail "upgrade started the agent $((n1 - n0)) times"
[ "$(prop demo-web.service InvocationID)" = "$web_inv" ] && pass "upgrade did not restart demo-web.service" || fail "upgrade restarted demo-web.service"

# --- escalation → deregister and replace in moto ------------------------------------------------
phase "demo-web cannot start: the agent escalates, the leader deregisters and replaces"
mkdir -p "$R/etc/systemd/system/demo-web.service.d"
printf '[Service]\nExecStartPre=/bin/false\n' >"$R/etc/systemd/system/demo-web.service.d/broken.conf"
in_ct systemctl daemon-reload
in_ct systemctl kill -s KILL demo-web.service
escalated() { ctl "$(ip_of "$leader")" --output json instance "$iid" 2>/dev/null | grep -q '"escalated"'; }
if [ -n "$leader" ] && wait_for 40 escalated; then
  pass "the agent escalated after its restarts failed; the leader shows $iid escalated"
else
  fail "no escalation seen by the leader: $(agent_log 4)"
fi
query() { python3 tests/fixtures/moto_query.py --endpoint "$moto" --target-group "$tg" --asg web; }
deregistered() { ! query | jq -e --arg i "$iid" '.targets[] | select(.id == $i and .state != "draining")' >/dev/null; }
replaced() { query | jq -e --arg i "$iid" '.instances[] | select(.id == $i and .health == "Unhealthy")' >/dev/null; }
if wait_for 40 deregistered; then pass "the leader deregistered $iid from the target group in moto"; else fail "$iid is still a registered target"; fi
if wait_for 40 replaced; then pass "the leader replaced $iid (SetInstanceHealth Unhealthy in moto)"; else fail "$iid was not marked Unhealthy: $(query | jq -c .instances)"; fi
ctl "$(ip_of "${leader:-a}")" actions 2>/dev/null | sed 's/^/        /' | head -8

# --- uninstall ----------------------------------------------------------------------------------
phase "uninstall"
before=$(hashes)
web_inv=$(prop demo-web.service InvocationID)
if in_ct bash -c 'cd /root/pkg-2 && ./uninstall.sh' >"$work/uninstall.log" 2>&1; then
  pass "uninstall.sh: $(tail -1 "$work/uninstall.log")"
else
  fail "uninstall.sh: $(tail -3 "$work/uninstall.log" | tr '\n' ' ')"
fi
[ "$(prop autoheal-agent.service LoadState)" = not-found ] && ! in_ct test -e /usr/local/bin/autoheal-agent &&
  ! in_ct test -e /etc/polkit-1/rules.d/50-autoheal-agent.rules &&
  pass "uninstall removed the unit, the binary and the polkit rule" || fail "uninstall left the unit, binary or rule behind"
[ "$(hashes)" = "$before" ] && in_ct id autoheal >/dev/null && pass "uninstall kept the config, the TLS files and the user" || fail "uninstall changed the config, TLS files or user"
[ "$(prop demo-web.service InvocationID)" = "$web_inv" ] && pass "uninstall did not touch demo-web.service" || fail "uninstall restarted demo-web.service"

summary
