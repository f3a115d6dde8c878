"""Schemathesis hooks: send Glance's JSON-patch media type as JSON."""

from __future__ import annotations

import json

import schemathesis


@schemathesis.serializer("application/openstack-images-v2.1-json-patch")
def json_patch(ctx, value):
    return json.dumps(value).encode()
