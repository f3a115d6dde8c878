"""Stage ``verify``: the staged bytes must match the checksum and hash the user declared."""

from __future__ import annotations

from typing import Any

from imageport.errors import HashMismatch
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.hashing import same_digest

NAME = "verify"


def run(ctx: JobContext, services: Services) -> dict[str, Any]:  # noqa: ARG001
    """Compare declared digests with the staged ones in constant time.

    Raises:
        HashMismatch: any declared digest differs; nothing of the import is kept.
    """
    staged = ctx.outputs["stage"]
    request = ctx.request
    checked: list[str] = []
    if request.checksum is not None:
        if not same_digest(request.checksum, staged["md5"]):
            raise HashMismatch(
                f"the data's MD5 is {staged['md5']} but checksum {request.checksum} was "
                "declared: check the file or the checksum you gave"
            )
        checked.append("md5")
    if request.os_hash_algo is not None and request.os_hash_value is not None:
        if request.os_hash_algo == staged["hash_algo"]:
            actual = staged["hash_value"]
        else:
            actual = staged["extra_hash"]["value"]
        if not same_digest(request.os_hash_value, actual):
            raise HashMismatch(
                f"the data's {request.os_hash_algo} is {actual} but {request.os_hash_value} "
                "was declared: check the file or the hash you gave"
            )
        checked.append(request.os_hash_algo)
    return {"verified": checked}
