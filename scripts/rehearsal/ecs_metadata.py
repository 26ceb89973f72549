#!/usr/bin/env python3
"""A stand-in for the ECS task metadata endpoint v4, for the rehearsal: serves
GET /<task>/task with the fields ECS returns (TaskARN, ServiceName, Containers[].Networks).

    ecs_metadata.py --listen HOST:PORT --service NAME TASK=IPV4 ...
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--service", default="")
    parser.add_argument("tasks", nargs="+")
    args = parser.parse_args()
    tasks = dict(t.split("=", 1) for t in args.tasks)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[1] != "task" or parts[0] not in tasks:
                self.send_error(404)
                return
            ip = tasks[parts[0]]
            body = {
                "Cluster": "arn:aws:ecs:us-east-1:111122223333:cluster/autoheal",
                "TaskARN": f"arn:aws:ecs:us-east-1:111122223333:task/autoheal/{parts[0]}",
                "Family": "autoheal-coordinator",
                "Revision": "1",
                "LaunchType": "FARGATE",
                "Containers": [
                    {"Name": name, "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": [ip]}]}
                    for name in ("tls-init", "coordinator")
                ],
            }
            if args.service:
                body["ServiceName"] = args.service
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_):
            pass

    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
