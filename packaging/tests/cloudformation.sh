#!/usr/bin/env bash
# The CloudFormation template: cfn-lint with zero errors and zero warnings, and the properties
# the design depends on (checked on the parsed template, so a lint-clean edit can't drop them).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$(dirname "$0")/../lib.sh"
ensure_venv
template=$repo/packaging/cloudformation/autoheal.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "cfn-lint (errors and warnings)"
lint_clean() { # TEMPLATE
  local out rc=0
  out=$("$venv/bin/cfn-lint" --format parseable -- "$1" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then printf '%s\n' "$out" >&2; return 1; fi
}
lint_out=$("$venv/bin/cfn-lint" --format parseable -- "$template" 2>&1 || true)
echo "  cfn-lint: $(printf '%s' "$lint_out" | grep -c . || true) finding line(s)"
check "cfn-lint $(basename "$template"): exit 0, no errors, no warnings" lint_clean "$template"
sed 's/BillingMode: PAY_PER_REQUEST/BillingMode: ON_DEMAND/' "$template" >"$work/bad.yaml"
check "cfn-lint gate catches an invalid property value" not lint_clean "$work/bad.yaml" 2>/dev/null

step "what the design requires of the stack"
"$venv/bin/python" - "$template" <<'PY' || failures=$((failures + 1))
import sys
from cfnlint.decode import decode

t, errors = decode(sys.argv[1])
assert not errors, errors
r = t["Resources"]
failed = 0

def check(what, ok):
    global failed
    print(("  ok    " if ok else "  FAIL  ") + what)
    failed += not ok

def of_type(kind):
    return {k: v.get("Properties", {}) for k, v in r.items() if v["Type"] == kind}

table = r["StateTable"]["Properties"]
check("DynamoDB: on-demand", table.get("BillingMode") == "PAY_PER_REQUEST")
check("DynamoDB: TTL on expires_at", table.get("TimeToLiveSpecification") == {"AttributeName": "expires_at", "Enabled": True})
check("DynamoDB: encrypted at rest", table.get("SSESpecification", {}).get("SSEEnabled") is True)
check("DynamoDB: point-in-time recovery", table.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is True)
check("DynamoDB: retained on delete and replace", r["StateTable"].get("DeletionPolicy") == "Retain" and r["StateTable"].get("UpdateReplacePolicy") == "Retain")

lb = r["LoadBalancer"]["Properties"]
check("NLB: network, internal", lb.get("Type") == "network" and lb.get("Scheme") == "internal")
listeners = of_type("AWS::ElasticLoadBalancingV2::Listener")
check("NLB: one listener, TCP 7443 (pass-through: no TLS listener, no certificate)",
      [(l.get("Protocol"), l.get("Port")) for l in listeners.values()] == [("TCP", 7443)])
tg = r["TargetGroup"]["Properties"]
check("target group: TCP 7443 to task IPs, TCP health check",
      (tg.get("Protocol"), tg.get("Port"), tg.get("TargetType"), tg.get("HealthCheckProtocol")) == ("TCP", 7443, "ip", "TCP"))

def rules(props, key):
    return props.get(key, [])

nlb_sg, task_sg = r["NlbSecurityGroup"]["Properties"], r["TaskSecurityGroup"]["Properties"]
ingress = rules(nlb_sg, "SecurityGroupIngress")
check("NLB SG: in only on 7443 (agents' SG, operators' CIDR)",
      all((x["IpProtocol"], x["FromPort"], x["ToPort"]) == ("tcp", 7443, 7443) for x in ingress) and len(ingress) == 2
      and not any(x.get("CidrIp") == "0.0.0.0/0" for x in ingress))
check("NLB SG: out only to the tasks on 7443",
      [(x["IpProtocol"], x["FromPort"], x["ToPort"], x.get("DestinationSecurityGroupId")) for x in rules(nlb_sg, "SecurityGroupEgress")]
      == [("tcp", 7443, 7443, {"Ref": "TaskSecurityGroup"})])
task_in = [p for p in of_type("AWS::EC2::SecurityGroupIngress").values() if p.get("GroupId") == {"Ref": "TaskSecurityGroup"}]
check("task SG: in only from the NLB SG on 7443",
      not rules(task_sg, "SecurityGroupIngress")
      and [(p["IpProtocol"], p["FromPort"], p["ToPort"], p.get("SourceSecurityGroupId")) for p in task_in]
      == [("tcp", 7443, 7443, {"Ref": "NlbSecurityGroup"})])
check("task SG: out only HTTPS", [(x["IpProtocol"], x["FromPort"], x["ToPort"]) for x in rules(task_sg, "SecurityGroupEgress")] == [("tcp", 443, 443)])

logs = r["LogGroup"]["Properties"]
check("log group with retention", "RetentionInDays" in logs)

td = r["TaskDefinition"]["Properties"]
check("task: Fargate, awsvpc", td.get("RequiresCompatibilities") == ["FARGATE"] and td.get("NetworkMode") == "awsvpc")
containers = {c["Name"]: c for c in td["ContainerDefinitions"]}
check("task: no container has plain environment variables", not any("Environment" in c for c in containers.values()))
check("task: every container non-root, read-only root fs, capabilities dropped, logs to the log group",
      all(c.get("User") == "65532:65532" and c.get("ReadonlyRootFilesystem") is True
          and c.get("LinuxParameters", {}).get("Capabilities", {}).get("Drop") == ["ALL"]
          and c.get("LogConfiguration", {}).get("LogDriver") == "awslogs"
          and c["LogConfiguration"]["Options"].get("awslogs-group") == {"Ref": "LogGroup"}
          for c in containers.values()))
coord = containers["coordinator"]
check("task: coordinator has a health check and no secrets of its own",
      "HealthCheck" in coord and "Secrets" not in coord)
check("task: the key comes from Secrets Manager via `secrets`",
      {"Name": "AUTOHEAL_KEY", "ValueFrom": {"Ref": "TlsKeySecretArn"}} in containers["tls-init"].get("Secrets", []))
svc = r["Service"]["Properties"]
check("service: no public IP, circuit breaker with rollback, behind the target group",
      svc["NetworkConfiguration"]["AwsvpcConfiguration"].get("AssignPublicIp") == "DISABLED"
      and svc["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
      and svc["LoadBalancers"][0]["ContainerPort"] == 7443)
check("IAM: task role, execution role, agent instance role and profile exist",
      {"CoordinatorTaskRole", "TaskExecutionRole", "AgentInstanceRole", "AgentInstanceProfile"} <= set(r))
check("no IAM managed policies (everything is written out)",
      not any("ManagedPolicyArns" in p for p in of_type("AWS::IAM::Role").values()))
sys.exit(1 if failed else 0)
PY

finish "cloudformation"
