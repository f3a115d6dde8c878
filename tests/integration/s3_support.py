"""S3 helpers for the tests that talk to moto in server mode (see conftest's moto_endpoint)."""

from __future__ import annotations

import hashlib

import boto3
from botocore.config import Config


def s3_client(endpoint: str, *, attempts: int = 3):
    """A boto3 client as build_stores makes one, pointed at ``endpoint``."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def open_uploads(endpoint: str, bucket: str) -> list[dict]:
    """Multipart uploads still open in ``bucket``, asked of moto directly."""
    return s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    return [
        o["Key"] for o in s3_client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])
    ]


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
