#!/usr/bin/env python3
"""The demo's web service: answers on PORT; `/` is 503 while the shared database (DB_PORT) doesn't
accept connections. With --broken-file F: if F exists at start, the service can't start (a bad
deploy), so restarts can't fix it and the agent must escalate."""
import argparse
import http.server
import os
import socket
import sys


def database_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-port", type=int, required=True)
    parser.add_argument("--broken-file", required=True)
    args = parser.parse_args()
    if os.path.exists(args.broken_file):
        print(f"cannot start: {args.broken_file} says this build is broken", file=sys.stderr)
        sys.exit(3)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            ok = database_up(args.db_port)
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok\n" if ok else b"database unreachable\n")

        def log_message(self, *_):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
