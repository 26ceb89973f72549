#!/usr/bin/env python3
"""Runs one container of the ECS task definition as ECS would, on this machine, for the
rehearsal: in the task's network namespace (awsvpc: one IP per task), with its own hostname,
its volumes mounted at the container paths the definition names (read-only where it says so),
a read-only root filesystem when it says so, as its `user`, with no capabilities, and with
exactly its `environment` plus what the platform adds (given with --platform-env). The image is
a folder whose usr/local/bin replaces the machine's. Replaces itself with the container's
process (exec), so its pid is the container's.

    task.py --taskdef FILE --container NAME --netns NS --hostname H --volumes DIR --image DIR
            [--platform-env K=V]... [--secret K=FILE]... -- ENTRYPOINT...
"""
import argparse
import json
import os
import shlex
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--taskdef", required=True)
    p.add_argument("--container", required=True)
    p.add_argument("--netns", required=True)
    p.add_argument("--hostname", required=True)
    p.add_argument("--volumes", required=True, help="one folder per task volume, by name")
    p.add_argument("--image", required=True)
    p.add_argument("--platform-env", action="append", default=[])
    p.add_argument("--secret", action="append", default=[], help="NAME=FILE: a resolved `secrets` entry")
    p.add_argument("--command", action="store_true", help="append the definition's command")
    p.add_argument("entrypoint", nargs="+")
    a = p.parse_args()

    task = json.load(open(a.taskdef))
    (c,) = [c for c in task["containerDefinitions"] if c["name"] == a.container]
    secret_names = {s["name"] for s in c.get("secrets", [])}
    given = {k for k, _ in (s.split("=", 1) for s in a.secret)}
    if given != secret_names:
        sys.exit(f"task.py: {a.container} takes secrets {sorted(secret_names)}, given {sorted(given)}")

    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": a.hostname}
    env.update(kv.split("=", 1) for kv in a.platform_env)
    env.update((e["name"], e["value"]) for e in c.get("environment", []))
    for s in a.secret:
        name, path = s.split("=", 1)
        with open(path) as f:
            env[name] = f.read().rstrip("\n")

    q = shlex.quote
    steps = [f"hostname {q(a.hostname)}"]
    for m in c.get("mountPoints", []):
        src = os.path.join(a.volumes, m["sourceVolume"])
        dst = m["containerPath"]
        steps.append(f"mkdir -p {q(dst)} 2>/dev/null || true")
        steps.append(f"mount --bind {q(src)} {q(dst)}")
        if m.get("readOnly"):
            steps.append(f"mount -o remount,bind,ro {q(dst)}")
    steps.append(f"mount --bind {q(os.path.join(a.image, 'usr/local/bin'))} /usr/local/bin")
    if c.get("readonlyRootFilesystem"):
        steps.append("mount -o remount,bind,ro /")
    user = c.get("user", "0:0")
    uid, _, gid = user.partition(":")
    argv = list(a.entrypoint) + (c.get("command", []) if a.command else [])
    run = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups",
           "--inh-caps=-all", "--bounding-set=-all", "env", "-i"]
    run += [f"{k}={v}" for k, v in sorted(env.items())]
    run += argv
    steps.append("exec " + " ".join(q(x) for x in run))
    script = " && ".join(steps)
    os.execvp("ip", ["ip", "netns", "exec", a.netns, "unshare", "--mount", "--uts",
                     "--propagation", "private", "sh", "-c", script])


if __name__ == "__main__":
    main()
