"""The IAM policies, the ECS task definition and the coordinator's config of
packaging/cloudformation/autoheal.yaml, as plain files.

The template is the one source of both. This renders them with example values (account
111122223333, us-east-1, stack `autoheal`): each role's permission policy into packaging/iam/
(for parliament, and for people who don't deploy with CloudFormation) and the task definition
into packaging/coordinator/ecs-task-definition.json (the input of `aws ecs
register-task-definition --cli-input-json`), and the coordinator's config (what the README puts
in Parameter Store) into packaging/coordinator/coordinator.toml: `[aws]` selecting exactly the
groups the task role may act on (the tag in its condition) and `[store]` on the stack's table.

  render [--out DIR] rewrite those files from the template (under DIR instead of packaging/)
  table             print the state table's properties (resolved) as JSON, for fixtures
  config [--stack NAME]
                    print the coordinator config for a stack named NAME (default autoheal)
  check             the files match the template (no drift), and the coordinator task role
                    grants exactly COORDINATOR_ACTIONS from coordinator/src/adapters/aws/actions.rs
  actions FILE...   print the actions granted by policy files (one per line, sorted)

Run it with the packaging venv's python (it reads the template with cfn-lint's YAML loader).
"""

import json
import os
import re
import sys
from pathlib import Path

from cfnlint.decode import decode

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "packaging/cloudformation/autoheal.yaml"
OUT = REPO / "packaging"
# Overridable so the tests can show that a difference is caught.
RUST_ACTIONS = Path(os.environ.get("AUTOHEAL_ACTIONS_FILE", REPO / "coordinator/src/adapters/aws/actions.rs"))

# Role resource -> file name.
ROLES = {
    "CoordinatorTaskRole": "iam/coordinator-task-role.json",
    "TaskExecutionRole": "iam/coordinator-execution-role.json",
    "AgentInstanceRole": "iam/agent-instance-role.json",
}
TASK_DEFINITION = "coordinator/ecs-task-definition.json"
COORDINATOR_CONFIG = "coordinator/coordinator.toml"
# The parts of the config the template has no say in. {table} and {tag} come from the template.
CONFIG_TEXT = """\
# The coordinator's config on ECS: store it in Parameter Store as /autoheal/coordinator/config.toml
# (String). tls-init writes it to /run/autoheal/coordinator.toml next to the certificate files,
# which is what the relative paths below resolve against.
#
# Rendered from packaging/cloudformation/autoheal.yaml by packaging/render.py (stack {stack}):
# edit the template or render.py, then `packaging/check.sh --render`. Another stack name:
#   python3 packaging/render.py config --stack NAME
listen = "0.0.0.0:7443"
# Unset: taken from the ECS task metadata (the task's IP, port of listen), so followers
# redirect agents to this task.
# advertise = "10.0.1.23:7443"
trust_domain = "autoheal.example.com"
# Stays true until you have watched what it would do (autohealctl actions) and trust it.
dry_run = true
state_dir = "/var/lib/autoheal"

[tls]
ca = "ca.pem"
cert = "coordinator.pem"
key = "coordinator-key.pem"

# Region and credentials come from the task (AWS_REGION, the task role).
[aws]
# Exactly the groups the task role may act on (its autoscaling:ResourceTag condition).
asg_tag = "{tag}"

# The stack's table, shared by every replica: one holds the lease and acts.
[store]
backend = "dynamodb"
table = "{table}"
"""
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "111122223333",
    "AWS::StackName": "autoheal",
}
# Parameters without a default, and what the example stack's resources resolve to.
EXAMPLES = {
    "TlsKeySecretArn": "arn:aws:secretsmanager:us-east-1:111122223333:secret:autoheal/coordinator/tls-key-AbCdEf",
    "StateTable": "autoheal-state",
    "StateTable.Arn": "arn:aws:dynamodb:us-east-1:111122223333:table/autoheal-state",
    "NotificationTopic": "arn:aws:sns:us-east-1:111122223333:autoheal-events",
    "LogGroup": "/autoheal/autoheal/coordinator",
    "CoordinatorImage": "111122223333.dkr.ecr.us-east-1.amazonaws.com/autoheal:coordinator-0.1.0",
    "TlsInitImage": "111122223333.dkr.ecr.us-east-1.amazonaws.com/autoheal:tls-init-0.1.0",
    "TaskExecutionRole.Arn": "arn:aws:iam::111122223333:role/autoheal-coordinator-execution",
    "CoordinatorTaskRole.Arn": "arn:aws:iam::111122223333:role/autoheal-coordinator",
}


def api_names(node, keep_keys=False):
    """CloudFormation's property names are the ECS API's with a capital first letter; the
    keys of a log driver's Options are the driver's own and stay as they are."""
    if isinstance(node, dict):
        return {
            (k if keep_keys else k[:1].lower() + k[1:]): api_names(v, keep_keys=(k == "Options"))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [api_names(x) for x in node]
    return node


class Resolver:
    def __init__(self, template, stack=None):
        self.values = dict(PSEUDO)
        if stack:
            self.values["AWS::StackName"] = stack
        for name, p in template.get("Parameters", {}).items():
            if "Default" in p:
                self.values[name] = str(p["Default"])
        self.values.update(EXAMPLES)

    def lookup(self, name):
        if name not in self.values:
            raise SystemExit(f"render.py: no example value for {name!r}: add it to EXAMPLES")
        return self.values[name]

    def resolve(self, node):
        if isinstance(node, dict):
            if len(node) == 1:
                (key, arg), = node.items()
                if key == "Ref":
                    return self.lookup(arg)
                if key == "Fn::GetAtt":
                    return self.lookup(".".join(arg) if isinstance(arg, list) else arg)
                if key == "Fn::Sub":
                    text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                    local = {k: self.resolve(v) for k, v in local.items()}
                    return re.sub(r"\$\{([^}!][^}]*)\}", lambda m: local.get(m.group(1)) or self.lookup(m.group(1)), text)
                if key == "Fn::Join":
                    return arg[0].join(self.resolve(x) for x in arg[1])
                if key.startswith("Fn::"):
                    raise SystemExit(f"render.py: {key} is not supported in policies")
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(x) for x in node]
        return node


def read_template():
    template, errors = decode(str(TEMPLATE))
    if errors:
        raise SystemExit(f"render.py: cannot read {TEMPLATE}: {errors}")
    return template


def managed_tag(template):
    """KEY=VALUE of the tag the task role's replace statement is conditioned on."""
    for st in template["Resources"]["CoordinatorTaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]:
        if st.get("Sid") != "ReplaceOnlyInTaggedGroups":
            continue
        for key, value in st["Condition"]["StringEquals"].items():
            prefix = "autoscaling:ResourceTag/"
            if key.startswith(prefix):
                return f"{key[len(prefix):]}={value}"
    raise SystemExit("render.py: no autoscaling:ResourceTag/... condition in CoordinatorTaskRole's ReplaceOnlyInTaggedGroups")


def coordinator_config(template, stack="autoheal"):
    resolver = Resolver(template, stack)
    table = resolver.resolve(template["Resources"]["StateTable"]["Properties"]["TableName"])
    return CONFIG_TEXT.format(stack=stack, table=table, tag=managed_tag(template))


def render():
    template = read_template()
    resolver = Resolver(template)
    out = {}
    for resource, file in ROLES.items():
        policies = template["Resources"][resource]["Properties"]["Policies"]
        if len(policies) != 1:
            raise SystemExit(f"render.py: {resource} must have exactly one inline policy")
        doc = resolver.resolve(policies[0]["PolicyDocument"])
        out[file] = json.dumps(doc, indent=2) + "\n"
    task = resolver.resolve(template["Resources"]["TaskDefinition"]["Properties"])
    out[TASK_DEFINITION] = json.dumps(api_names(task), indent=2) + "\n"
    out[COORDINATOR_CONFIG] = coordinator_config(template)
    return out


def granted(doc):
    """Every action an Allow statement grants; wildcards and NotAction are refused outright."""
    actions = set()
    for st in doc["Statement"]:
        if "NotAction" in st or "NotResource" in st:
            raise SystemExit(f"render.py: statement {st.get('Sid')}: NotAction/NotResource are not allowed")
        if st["Effect"] != "Allow":
            continue
        names = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for a in names:
            if "*" in a or "?" in a:
                raise SystemExit(f"render.py: statement {st.get('Sid')}: wildcard action {a!r}")
            actions.add(a)
    return actions


def rust_actions():
    text = RUST_ACTIONS.read_text()
    m = re.search(r"COORDINATOR_ACTIONS\s*:\s*&\[&str\]\s*=\s*&\[(.*?)\];", text, re.S)
    if not m:
        raise SystemExit(f"render.py: no `pub const COORDINATOR_ACTIONS: &[&str] = &[...];` in {RUST_ACTIONS}")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    actions = re.findall(r'"([^"]*)"', body)
    bad = [a for a in actions if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", a)]
    if bad:
        raise SystemExit(f"render.py: not IAM actions in {RUST_ACTIONS}: {bad}")
    if len(set(actions)) != len(actions):
        raise SystemExit(f"render.py: duplicate actions in {RUST_ACTIONS}")
    return set(actions)


def check():
    ok = True
    for file, text in render().items():
        path = OUT / file
        if not path.exists() or path.read_text() != text:
            ok = False
            print(f"  FAIL  {path.relative_to(REPO)} differs from the template: run `packaging/check.sh --render`")
        else:
            print(f"  ok    {path.relative_to(REPO)} matches the template")
    policy = granted(json.loads(render()[ROLES["CoordinatorTaskRole"]]))
    code = rust_actions()
    if policy == code:
        print(f"  ok    coordinator task role grants exactly the {len(code)} actions of COORDINATOR_ACTIONS")
    else:
        ok = False
        print("  FAIL  coordinator task role and COORDINATOR_ACTIONS differ:")
        for a in sorted(code - policy):
            print(f"          called but not granted: {a}")
        for a in sorted(policy - code):
            print(f"          granted but never called: {a}")
    return ok


def main(argv):
    cmd = argv[1] if len(argv) > 1 else "check"
    if cmd == "render":
        out = Path(argv[3]) if argv[2:3] == ["--out"] and len(argv) == 4 else OUT
        for file, text in render().items():
            (out / file).parent.mkdir(parents=True, exist_ok=True)
            (out / file).write_text(text)
            print(f"wrote {out / file}")
        return 0
    if cmd == "table":
        template = read_template()
        props = Resolver(template).resolve(template["Resources"]["StateTable"]["Properties"])
        print(json.dumps(props, indent=2))
        return 0
    if cmd == "config":
        stack = "autoheal"
        if argv[2:3] == ["--stack"] and len(argv) == 4:
            stack = argv[3]
        elif len(argv) > 2:
            print(__doc__, file=sys.stderr)
            return 2
        sys.stdout.write(coordinator_config(read_template(), stack))
        return 0
    if cmd == "check":
        return 0 if check() else 1
    if cmd == "actions":
        for f in argv[2:]:
            for a in sorted(granted(json.loads(Path(f).read_text()))):
                print(a)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
