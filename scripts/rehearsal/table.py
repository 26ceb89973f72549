#!/usr/bin/env python3
"""Creates the state table in moto from the template's StateTable properties (JSON on stdin,
from `packaging/render.py table`): what `aws cloudformation deploy` would create.

    render.py table | table.py --endpoint URL
"""
import argparse
import json
import sys

import boto3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    props = json.load(sys.stdin)
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=args.endpoint,
        region_name=args.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ddb.create_table(
        TableName=props["TableName"],
        AttributeDefinitions=props["AttributeDefinitions"],
        KeySchema=props["KeySchema"],
        BillingMode=props["BillingMode"],
        SSESpecification={"Enabled": props.get("SSESpecification", {}).get("SSEEnabled", False)},
    )
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        ddb.update_time_to_live(TableName=props["TableName"], TimeToLiveSpecification=ttl)
    print(props["TableName"])


if __name__ == "__main__":
    main()
