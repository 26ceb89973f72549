#!/usr/bin/env python3
"""A stand-in for one instance's IMDSv2, for the demo: a session token (PUT with the TTL header),
then the instance id, the availability zone, the instance identity document and its RSA-2048 PKCS7
signature, made with `openssl smime -stream` (the BER AWS serves) by a demo signer key that the
demo's coordinator is configured to trust in place of AWS's region certificate.

    imds.py --port P --instance-id ID --az AZ --signer-cert C --signer-key K
"""
import argparse
import datetime
import http.server
import json
import secrets
import subprocess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--az", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account", default="123456789012")
    parser.add_argument("--signer-cert", required=True)
    parser.add_argument("--signer-key", required=True)
    args = parser.parse_args()

    pending = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = json.dumps(
        {
            "accountId": args.account,
            "architecture": "x86_64",
            "availabilityZone": args.az,
            "imageId": "ami-demo",
            "instanceId": args.instance_id,
            "instanceType": "t3.micro",
            "pendingTime": pending,
            "privateIp": "10.0.0.1",
            "region": args.region,
            "version": "2017-09-30",
        },
        indent=2,
    ).encode()
    pem = subprocess.run(
        ["openssl", "smime", "-sign", "-binary", "-nodetach", "-md", "sha256", "-stream",
         "-nocerts", "-outform", "PEM", "-signer", args.signer_cert, "-inkey", args.signer_key],
        input=document, capture_output=True, check=True,
    ).stdout.decode()
    signature = "".join(l for l in pem.splitlines() if not l.startswith("-----")).encode()
    tokens = set()
    paths = {
        "/latest/meta-data/instance-id": args.instance_id.encode(),
        "/latest/meta-data/placement/availability-zone": args.az.encode(),
        "/latest/dynamic/instance-identity/document": document,
        "/latest/dynamic/instance-identity/rsa2048": signature,
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if self.path != "/latest/api/token" or not ttl.isdigit():
                return self.answer(400)
            token = secrets.token_urlsafe(24)
            tokens.add(token)
            self.answer(200, token.encode())

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                return self.answer(401)
            body = paths.get(self.path)
            self.answer(200, body) if body is not None else self.answer(404)

        def log_message(self, *_args) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
