#!/usr/bin/env bash
# IAM: the JSON policies match the CloudFormation template, parliament reports nothing on any of
# them, and the coordinator task role grants exactly the actions in COORDINATOR_ACTIONS
# (coordinator/src/adapters/aws/actions.rs), no more, no less.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$(dirname "$0")/../lib.sh"
ensure_venv
py=$venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "policies rendered from the template; task role == COORDINATOR_ACTIONS"
if "$py" "$repo/packaging/render.py" check; then pass "render.py check"; else fail "render.py check"; fi

# The comparison must be able to fail both ways.
sed 's/"events:PutEvents",/"events:PutEvents",\n    "s3:GetObject",/' "$repo/coordinator/src/adapters/aws/actions.rs" >"$work/more.rs"
reports() { # ACTIONS_FILE TEXT: the check fails and says TEXT
  local out
  if out=$(AUTOHEAL_ACTIONS_FILE=$1 "$py" "$repo/packaging/render.py" check); then return 1; fi
  grep -qF -- "$2" <<<"$out"
}
check "an action called but not granted is caught" reports "$work/more.rs" "called but not granted: s3:GetObject"
grep -v '"sns:Publish"' "$repo/coordinator/src/adapters/aws/actions.rs" >"$work/fewer.rs"
check "an action granted but never called is caught" reports "$work/fewer.rs" "granted but never called: sns:Publish"
check "a missing COORDINATOR_ACTIONS list is an error" \
  not env AUTOHEAL_ACTIONS_FILE=/dev/null "$py" "$repo/packaging/render.py" check 2>/dev/null

step "parliament reports nothing"
# parliament reads the policy from stdin (with --file it refuses a non-terminal stdin).
parliament_quiet() { # FILE
  local out rc=0
  out=$("$venv/bin/parliament" <"$1" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then printf '    exit %s:\n%s\n' "$rc" "$out" >&2; return 1; fi
}
for f in "$repo"/packaging/iam/*.json; do
  check "parliament: ${f#"$repo/"}" parliament_quiet "$f"
done
cat >"$work/bad.json" <<'JSON'
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket"}]}
JSON
check "parliament gate catches a resource that can't match its action" not parliament_quiet "$work/bad.json" 2>/dev/null

step "least privilege by construction"
roles=("$repo"/packaging/iam/*.json)
check "no wildcard actions" not grep -hE '"[a-z0-9-]+:[A-Za-z]*\*' "${roles[@]}"
check "no NotAction / NotResource" not grep -hE '"Not(Action|Resource)"' "${roles[@]}"
task=$repo/packaging/iam/coordinator-task-role.json
star_ok='["autoscaling:DescribeAutoScalingGroups","autoscaling:DescribeInstanceRefreshes","ec2:DescribeInstances","elasticloadbalancing:DescribeTargetGroupAttributes","elasticloadbalancing:DescribeTargetHealth","ssm:GetCommandInvocation"]'
check "task role: Resource * only for the 6 actions that take no ARN" \
  is "$(jq -c '[.Statement[] | select(.Resource == "*") | .Action] | flatten | sort' "$task")" "$star_ok"
check "task role: ASG and target-group changes need the autoheal:enabled=true tag" \
  is "$(jq -c '[.Statement[] | select(.Sid == "ReplaceOnlyInTaggedGroups" or .Sid == "DeregisterOnlyFromTaggedTargetGroups") | .Condition.StringEquals | to_entries[0].value]' "$task")" '["true","true"]'
check "task role: SendCommand only with AWS-RunShellScript" \
  is "$(jq -r '[.Statement[] | select(.Effect == "Allow" and .Action == "ssm:SendCommand") | .Resource[] | select(contains(":document/"))] | join(",")' "$task")" "arn:aws:ssm:us-east-1:*:document/AWS-RunShellScript"
check "task role: SendCommand denied on instances without autoheal:enabled=true" \
  is "$(jq -c '[.Statement[] | select(.Effect == "Deny") | [.Action, .Condition.StringNotEquals["ssm:resourceTag/autoheal:enabled"]]]' "$task")" '[["ssm:SendCommand","true"]]'
check "task role: DynamoDB only on the state table" \
  is "$(jq -r '[.Statement[] | select(.Action | tostring | contains("dynamodb:")) | .Resource] | unique | join(",")' "$task")" "arn:aws:dynamodb:us-east-1:111122223333:table/autoheal-state"
check "agent role: no autoheal action, only SSM Agent plumbing" \
  not grep -hE '"(autoscaling|elasticloadbalancing|dynamodb|sns|events|s3|iam|ec2):' "$repo/packaging/iam/agent-instance-role.json"

finish "iam"
