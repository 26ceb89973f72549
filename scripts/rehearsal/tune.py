#!/usr/bin/env python3
"""What an operator changes in the rendered coordinator config before putting it in Parameter
Store, for the rehearsal: dry_run off (README step 9) and rehearsal-speed timings. Keys go into
the sections the config already has ([aws], [store]); a config without them stays without them,
so a config that cannot act is rehearsed as it is.

    tune.py < coordinator.toml > tuned.toml
"""
import sys

INTO = {
    "aws": ['interval = "1s"', 'call_timeout = "3s"', "max_attempts = 2"],
    "store": ['lease_ttl = "6s"', 'lease_renew_interval = "1s"'],
}
APPEND = """
[ladder]
drain_timeout = "1s"
# The fleet's other two instances run no agent: not silent within the rehearsal.
agent_silence_grace = "10m"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
instance_cooldown = "0s"
"""


def main() -> None:
    out = []
    for line in sys.stdin.read().splitlines():
        if line.strip() == "dry_run = true":
            line = "dry_run = false"
        out.append(line)
        header = line.strip()
        if header.startswith("[") and header.endswith("]"):
            out.extend(INTO.get(header[1:-1], []))
    sys.stdout.write("\n".join(out) + "\n" + APPEND)


if __name__ == "__main__":
    main()
