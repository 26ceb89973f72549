"""The IAM policies of packaging/cloudformation/autoheal.yaml, as plain JSON.

The template is the one source of the policies. This renders each role's permission policy
with example values (account 111122223333, us-east-1, stack `autoheal`) into packaging/iam/, for
people who don't deploy with CloudFormation and for parliament, and checks:

  render            rewrite packaging/iam/*.json from the template
  check             the JSON files match the template (no drift), and the coordinator task
                    role grants exactly COORDINATOR_ACTIONS from coordinator/src/aws_actions.rs
  actions FILE...   print the actions granted by policy files (one per line, sorted)

Run it with the packaging venv's python (it reads the template with cfn-lint's YAML loader).
"""

import json
import re
import sys
from pathlib import Path

from cfnlint.decode import decode

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "packaging/cloudformation/autoheal.yaml"
OUT = REPO / "packaging/iam"
RUST_ACTIONS = REPO / "coordinator/src/aws_actions.rs"

# Role resource -> file name.
ROLES = {
    "CoordinatorTaskRole": "coordinator-task-role.json",
    "TaskExecutionRole": "coordinator-execution-role.json",
    "AgentInstanceRole": "agent-instance-role.json",
}
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
}


class Resolver:
    def __init__(self, template):
        self.values = dict(PSEUDO)
        for name, p in template.get("Parameters", {}).items():
            if "Default" in p:
                self.values[name] = str(p["Default"])
        self.values.update(EXAMPLES)

    def lookup(self, name):
        if name not in self.values:
            raise SystemExit(f"policies.py: no example value for {name!r}: add it to EXAMPLES")
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
                    raise SystemExit(f"policies.py: {key} is not supported in policies")
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(x) for x in node]
        return node


def render():
    template, errors = decode(str(TEMPLATE))
    if errors:
        raise SystemExit(f"policies.py: cannot read {TEMPLATE}: {errors}")
    resolver = Resolver(template)
    out = {}
    for resource, file in ROLES.items():
        policies = template["Resources"][resource]["Properties"]["Policies"]
        if len(policies) != 1:
            raise SystemExit(f"policies.py: {resource} must have exactly one inline policy")
        doc = resolver.resolve(policies[0]["PolicyDocument"])
        out[file] = json.dumps(doc, indent=2) + "\n"
    return out


def granted(doc):
    """Every action an Allow statement grants; wildcards and NotAction are refused outright."""
    actions = set()
    for st in doc["Statement"]:
        if "NotAction" in st or "NotResource" in st:
            raise SystemExit(f"policies.py: statement {st.get('Sid')}: NotAction/NotResource are not allowed")
        if st["Effect"] != "Allow":
            continue
        names = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for a in names:
            if "*" in a or "?" in a:
                raise SystemExit(f"policies.py: statement {st.get('Sid')}: wildcard action {a!r}")
            actions.add(a)
    return actions


def rust_actions():
    text = RUST_ACTIONS.read_text()
    m = re.search(r"COORDINATOR_ACTIONS\s*:\s*&\[&str\]\s*=\s*&\[(.*?)\];", text, re.S)
    if not m:
        raise SystemExit(f"policies.py: no `pub const COORDINATOR_ACTIONS: &[&str] = &[...];` in {RUST_ACTIONS}")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    actions = re.findall(r'"([^"]*)"', body)
    bad = [a for a in actions if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", a)]
    if bad:
        raise SystemExit(f"policies.py: not IAM actions in {RUST_ACTIONS}: {bad}")
    if len(set(actions)) != len(actions):
        raise SystemExit(f"policies.py: duplicate actions in {RUST_ACTIONS}")
    return set(actions)


def check():
    ok = True
    for file, text in render().items():
        path = OUT / file
        if not path.exists() or path.read_text() != text:
            print(f"  FAIL  {path.relative_to(REPO)} differs from the template: run `python packaging/iam/policies.py render`")
            ok = False
        else:
            print(f"  ok    {path.relative_to(REPO)} matches the template")
    policy = granted(json.loads(render()["coordinator-task-role.json"]))
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
        for file, text in render().items():
            (OUT / file).write_text(text)
            print(f"wrote {(OUT / file).relative_to(REPO)}")
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
