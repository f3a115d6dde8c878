"""Stage ``verify``: the staged bytes must match the checksum and hash the user declared."""

from __future__ import annotations

from imageport.errors import HashMismatch
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data.hashing import hash_file, same_digest
from imageport.pipeline.outputs import StagedOutput, VerifiedOutput
from imageport.pipeline.stages.base import BaseStage


class Verification(BaseStage):
    """The ``verify`` stage."""

    name = "verify"
    output_type = VerifiedOutput

    def run(self, ctx: JobContext, services: Services) -> VerifiedOutput:  # noqa: ARG002
        """Compare declared digests with the staged ones in constant time.

        Raises:
            HashMismatch: any declared digest differs; nothing of the import is kept.
        """
        staged = ctx.output(StagedOutput)
        request = ctx.request
        declared = request.checksum is not None or request.os_hash_value is not None
        if declared and staged.md5 is None and not staged.compression:
            # Staged without hashing (a glance-direct upload whose import now declares a
            # digest): hash the staged file, which holds exactly the received bytes.
            digests = hash_file(
                ctx.staged_path,
                request.os_hash_algo or ctx.settings.hash_algo,
                bytearray(ctx.settings.chunk_size),
            )
            staged = staged.model_copy(
                update={"md5": digests.md5, "hash_algo": digests.algo, "hash_value": digests.value}
            )
        checked: list[str] = []
        if request.checksum is not None:
            if not same_digest(request.checksum, staged.md5 or ""):
                raise HashMismatch(
                    f"the data's MD5 is {staged.md5} but checksum {request.checksum} was "
                    "declared: check the file or the checksum you gave"
                )
            checked.append("md5")
        if request.os_hash_algo is not None and request.os_hash_value is not None:
            actual = staged.digest(request.os_hash_algo) or ""
            if not same_digest(request.os_hash_value, actual):
                raise HashMismatch(
                    f"the data's {request.os_hash_algo} is {actual} but "
                    f"{request.os_hash_value} was declared: check the file or the hash you gave"
                )
            checked.append(request.os_hash_algo)
        return VerifiedOutput(verified=checked)


STAGE = Verification()
