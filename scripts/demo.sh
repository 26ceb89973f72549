#!/usr/bin/env bash
# The local fleet demo: a coordinator and three agents as separate processes over mutual TLS on
# loopback, each agent supervising a real local web service, with moto server standing in for
# AWS (an Auto Scaling group, a target group). No AWS account needed.
#
# Scenes: (1) a crash healed locally by the agent; (2) a persistent failure escalated and acted
# on: deregistered from the target group and replaced through the ASG; (3) a shared-database
# outage held by the dependency brake: nothing replaced. Then `autohealctl status`.
#
#   scripts/demo.sh                          run it; Ctrl-C stops everything
#   AUTOHEAL_DEMO_NONINTERACTIVE=1 scripts/demo.sh   exit after the scenes (what the test does)
#   AUTOHEAL_DEMO_SKIP_BUILD=1    use the binaries already built (AUTOHEAL_DEMO_BIN_DIR, else
#                                 $CARGO_TARGET_DIR/debug, else target/debug)
#   AUTOHEAL_DEMO_KEEP=1          keep the logs and state
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

interactive=1
if [ "${AUTOHEAL_DEMO_NONINTERACTIVE:-}" = 1 ] || [ ! -t 0 ]; then interactive=0; fi

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '  %s\n' "$*"; }
fail() { printf '\ndemo FAILED: %s\n' "$*" >&2; exit 1; }

scripts/setup.sh
if [ "${AUTOHEAL_DEMO_SKIP_BUILD:-}" != 1 ]; then
  bold "building"
  cargo build --workspace --bins --quiet
fi
# The binaries: where the test harness found them, else cargo's target folder.
B=${AUTOHEAL_DEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}

DIR=$(mktemp -d "${TMPDIR:-/tmp}/autoheal-demo.XXXXXX")
pids=()
cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  if [ -n "${db_pid:-}" ]; then kill "$db_pid" 2>/dev/null; wait "$db_pid" 2>/dev/null; fi
  if [ "${AUTOHEAL_DEMO_KEEP:-}" = 1 ]; then echo "logs kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'echo; echo "stopping the fleet"; exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then fail "timed out after ${seconds}s waiting for $what (logs: AUTOHEAL_DEMO_KEEP=1)"; fi
    sleep 0.3
  done
}

bold "AWS: moto server on loopback, with an Auto Scaling group 'demo' of 3 instances behind a target group"
moto_port=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$moto_port" >"$DIR/moto.log" 2>&1 &
pids+=($!)
moto="http://127.0.0.1:$moto_port"
wait_for 30 "moto server" python3 -c "import urllib.request; urllib.request.urlopen('$moto/moto-api/')"
fleet=$(python3 tests/fixtures/moto_fleet.py --endpoint "$moto" --name demo --size 3)
mapfile -t ids < <(echo "$fleet" | json '"\n".join(i["instance_id"] for i in d["instances"])')
mapfile -t azs < <(echo "$fleet" | json '"\n".join(i["availability_zone"] for i in d["instances"])')
target_group=$(echo "$fleet" | json 'd["target_group"]')
say "instances: ${ids[*]}"

bold "PKI: a development CA, the coordinator's certificate and an operator's; instances enroll for theirs"
"$B/autohealctl" certs init "$DIR/pki" | sed 's/^/  /'
# Stands in for AWS's RSA-2048 region certificate: it signs each instance's identity document.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/signer-key.pem" -out "$DIR/signer.pem" \
  -days 1 -subj "/CN=demo stand-in for the AWS us-east-1 signer" >/dev/null 2>&1

db_port=$(free_port)
start_database() {
  python3 -m http.server "$db_port" --bind 127.0.0.1 >/dev/null 2>&1 &
  db_pid=$!
}
start_database

coord_port=$(free_port)
enroll_port=$(free_port)
cat >"$DIR/coordinator.toml" <<TOML
coordinator_id = "demo"
listen = "127.0.0.1:$coord_port"
trust_domain = "autoheal.local"
dry_run = false
state_dir = "state"

[tls]
ca = "pki/ca.pem"
cert = "pki/coordinator.pem"
key = "pki/coordinator-key.pem"

[agents]
heartbeat_interval = "1s"

[aws]
region = "us-east-1"
endpoint = "$moto"
asg_names = ["demo"]
interval = "1s"

[ladder]
drain_timeout = "2s"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
# 5m by default: a short window so the demo's scenes don't count against each other.
anomaly_window = "3s"

[enroll]
listen = "127.0.0.1:$enroll_port"
ca_cert = "pki/ca.pem"
ca_key = "pki/ca-key.pem"
accounts = ["123456789012"]
signers = { "us-east-1" = "signer.pem" }
burst = 50
TOML
bold "coordinator: live mode (acting on the emulated AWS), embedded state"
AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true \
  "$B/autoheal-coordinator" --config "$DIR/coordinator.toml" >"$DIR/coordinator.out" 2>"$DIR/coordinator.log" &
pids+=($!)
wait_for 30 "the coordinator" grep -q listening "$DIR/coordinator.out"
say "$(cat "$DIR/coordinator.out")"

ctl() { "$B/autohealctl" --pki "$DIR/pki" --endpoint "127.0.0.1:$coord_port" "$@"; }

bold "agents: one per instance, each supervising a web service on loopback; each enrolls itself"
# start_agent N ID AZ: that instance's IMDSv2 (identity document signed by the demo signer) and
# its agent, which enrolls for a certificate (no pre-issued one) and then connects.
start_agent() {
  local n=$1 id=$2 az=$3
  local web_port imds_port
  web_port=$(free_port)
  imds_port=$(free_port)
  python3 "$ROOT/scripts/demo/imds.py" --port "$imds_port" --instance-id "$id" --az "$az" \
    --signer-cert "$DIR/signer.pem" --signer-key "$DIR/signer-key.pem" &
  pids+=($!)
  wait_for 10 "the IMDS of $id" python3 -c "import socket; socket.create_connection(('127.0.0.1', $imds_port))"
  cat >"$DIR/agent-$n.toml" <<TOML
[coordinator]
endpoints = ["127.0.0.1:$coord_port"]
enroll_endpoint = "127.0.0.1:$enroll_port"
heartbeat_interval = "1s"
reconnect_initial = "200ms"
reconnect_max = "2s"

[tls]
ca = "pki/ca.pem"
cert = "agent-$n.pem"
key = "agent-$n-key.pem"

[identity]
imds_endpoint = "127.0.0.1:$imds_port"

[status]
socket = "agent-$n.sock"

[services.web]
run = ["python3", "$ROOT/scripts/demo/service.py", "--port", "$web_port", "--db-port", "$db_port", "--broken-file", "$DIR/broken-$n"]

[services.web.restart]
max_attempts = 2
window = "5m"
backoff_initial = "300ms"
backoff_max = "1s"
verify_timeout = "3s"

[[services.web.checks]]
name = "http"
kind = "http"
url = "http://127.0.0.1:$web_port/"
interval = "1s"
timeout = "500ms"
failure_threshold = 2

[[services.web.checks]]
name = "database"
kind = "tcp"
address = "127.0.0.1:$db_port"
interval = "1s"
timeout = "500ms"
failure_threshold = 2
dependency = "postgres-main"
TOML
  "$B/autoheal-agent" --config "$DIR/agent-$n.toml" >"$DIR/agent-$n.log" 2>&1 &
  pids+=($!)
}
for n in 1 2 3; do
  start_agent "$n" "${ids[$((n - 1))]}" "${azs[$((n - 1))]}"
done
all_connected() {
  [ "$(ctl -o json instances | json 'sum(1 for i in d if i["connected"] and i["asg"] == "demo")')" = 3 ]
}
wait_for 60 "three agents connected and placed in the ASG" all_connected
ctl instances | sed 's/^/  /'
say "their certificates came from enrollment:"
ctl enrollments | sed 's/^/    /'

agent_json() { "$B/autoheal-agent" status --config "$DIR/agent-$1.toml" -o json; }
web_pid() { agent_json "$1" | json 'd["services"][0].get("pid", "")'; }
web_healthy() { agent_json "$1" | json 'd["services"][0]["state"]' | grep -qx 'healthy'; }

bold "scene 1: the web service on instance 1 crashes (kill -9); its agent heals it locally"
wait_for 30 "web on instance 1 healthy" web_healthy 1
old_pid=$(web_pid 1)
kill -9 "$old_pid"
say "killed pid $old_pid"
restarted() { local p; p=$(web_pid 1); [ -n "$p" ] && [ "$p" != "$old_pid" ] && web_healthy 1; }
wait_for 30 "a new, healthy web process on instance 1" restarted
say "healthy again as pid $(web_pid 1), no coordinator involved:"
"$B/autoheal-agent" status --config "$DIR/agent-1.toml" | sed 's/^/    /'

say "(waiting 4s: the anomaly brake remembers recent trouble for its window, 3s here, 5m by default;"
say " scene 1's brief restart would otherwise count as a second bad instance out of three)"
sleep 4

bold "scene 2: instance 2 gets a build that can't start; restarts can't fix it, so its agent escalates"
touch "$DIR/broken-2"
kill -9 "$(web_pid 2)"
replaced() {
  ctl -o json actions --instance "${ids[1]}" | json '"yes" if any(a["kind"] == "replace" and a["status"] == "succeeded" for a in d) else ""' | grep -q yes
}
wait_for 120 "instance 2 to be deregistered and replaced" replaced
say "the coordinator's journal for ${ids[1]}:"
ctl actions --instance "${ids[1]}" | sed 's/^/    /'
say "what AWS (moto) now says:"
python3 tests/fixtures/moto_query.py --endpoint "$moto" --target-group "$target_group" --asg demo |
  json '"\n".join(["target group: " + ", ".join(t["id"] + "=" + t["state"] for t in d["targets"]), "asg health:   " + ", ".join(i["id"] + "=" + i["health"] for i in d["instances"])])' |
  sed 's/^/    /'

bold "scene 3: the shared database goes down; every agent reports it; the brake holds"
kill "$db_pid"; wait "$db_pid" 2>/dev/null || true
braked() { ctl -o json status | json 'd["groups"]' | grep -q dependency; }
wait_for 60 "the dependency brake" braked
ctl status | sed 's/^/  /'
say "would replacing instance 1 help? the engine says:"
ctl whatif "${ids[0]}" replace | sed 's/^/    /' || true
before=$(ctl -o json actions | json 'sum(1 for a in d if a["status"] == "succeeded")')
sleep 3
after=$(ctl -o json actions | json 'sum(1 for a in d if a["status"] == "succeeded")')
[ "$before" = "$after" ] || fail "an action was taken during the shared outage"
say "no action taken during the outage ($after actions in the journal, all from scene 2)"
start_database
say "database back"
recovered() { ! ctl -o json status | json 'd["groups"]' | grep -q brake; }
wait_for 60 "the brakes to release once the database is back" recovered
say "brakes released: instances 1 and 3 healthy again; instance 2 stays out (it was replaced)"

bold "scene 4: the replacement instance's agent enrolls on its own and joins the fleet"
# moto doesn't run the Auto Scaling health-replacement loop: do what the group would do with an
# Unhealthy instance (terminate it, keep the desired capacity, which launches a new one).
python3 -c "
import boto3
s = boto3.session.Session(aws_access_key_id='demo', aws_secret_access_key='demo', region_name='us-east-1')
s.client('autoscaling', endpoint_url='$moto').terminate_instance_in_auto_scaling_group(
    InstanceId='${ids[1]}', ShouldDecrementDesiredCapacity=False)
"
new_id=$(python3 tests/fixtures/moto_query.py --endpoint "$moto" --target-group "$target_group" --asg demo |
  json '"\n".join(i["id"] for i in d["instances"] if i["id"] not in "'"${ids[*]}"'".split())' | head -n 1)
[ -n "$new_id" ] || fail "the auto scaling group launched no replacement"
start_agent 4 "$new_id" "${azs[1]}"
new_connected() { ctl -o json instances | json '"yes" if any(i["instance_id"] == "'"$new_id"'" and i["connected"] for i in d) else ""' | grep -q yes; }
wait_for 60 "the replacement $new_id enrolled and connected" new_connected
say "replacement $new_id enrolled and connected:"
ctl enrollments | sed 's/^/    /'

bold "autohealctl status"
ctl status | sed 's/^/  /'

echo
echo "demo: all scenes passed"
if [ "$interactive" = 1 ]; then
  echo "the fleet keeps running: try \`$B/autohealctl --pki $DIR/pki --endpoint 127.0.0.1:$coord_port events --follow\`; Ctrl-C stops everything"
  while true; do sleep 1; done
fi
