"""The one exception tree of imageport, split by what the caller must do.

Every error carries a stable ``code`` (stored on the task and shown by the CLI) and a message
that says what to do about it::

    PipelineError                     root; never raised itself
    ├── TransientError                retry later with backoff: the same request may succeed
    │   ├── SourceUnavailable         the source could not be reached (network, 5xx)
    │   ├── QemuTimeout               qemu-img ran past its wall-clock limit
    │   ├── StoreUnavailable          a store could not be written or read right now
    │   ├── NoSpace                   not enough free space where the bytes would land
    │   ├── DatabaseUnavailable       the database connection was lost mid-job
    │   ├── StagingLost               a resumed job's staged data is gone; it stages again
    │   ├── Stalled                   no progress for the stall timeout
    │   └── ShutDown                  the worker shut down mid-stage; another continues
    ├── PermanentError                fail now: retrying the same request cannot succeed
    │   ├── InvalidRequest            the request itself is wrong (bad format name, bad hash)
    │   ├── SourceNotFound            the source does not exist (missing file, HTTP 4xx)
    │   ├── SizeLimitExceeded         more bytes than the configured caps allow
    │   ├── HashMismatch              the bytes do not match the checksum the user gave
    │   ├── UnsafeImage               the image failed inspection (format, safety checks)
    │   ├── ConversionFailed          qemu-img could not convert or describe the image
    │   │   └── QemuOutputTooLarge    qemu-img printed more than its output cap
    │   └── Cancelled                 an administrator cancelled the import
    ├── NotFound                      an image or task id that does not exist
    ├── NotStreamable                 (internal) a staging image the early conversion does
    │                                 not follow; it is converted once staged instead
    ├── StateError                    a status change that the state machine refuses
    │   ├── IllegalTransition         the transition is not in the state machine at all
    │   └── StateConflict             the record moved on under us (compare-and-set lost)
    ├── ConfigurationError            the settings are unusable (unknown store, bad URL)
    └── AccessError                   the caller may not do this (API: 401, 403, 413)
        ├── Unauthenticated           no valid identity (missing, invalid or expired token)
        ├── Forbidden                 the policy refuses the action to this caller
        └── OverQuota                 a quota or per-image limit would be exceeded

    JobInterrupted (BaseException)    a signal to stop the running job (cancel, lease lost,
                                      shutdown, stall); never an import failure by itself
"""

from __future__ import annotations

from typing import ClassVar


class PipelineError(Exception):
    """Root of every error imageport raises on purpose."""

    #: Stable machine-readable code, stored on tasks and stage runs.
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            # A per-instance code refines the class code (e.g. an UnsafeImage reason).
            self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        return self.message


class TransientError(PipelineError):
    """A failure that may go away by itself; the job is retried with backoff."""

    code = "transient_error"


class PermanentError(PipelineError):
    """A failure that retrying cannot fix; the import fails at once."""

    code = "permanent_error"


class SourceUnavailable(TransientError):
    """The source could not be reached or broke off mid-transfer."""

    code = "source_unavailable"


class QemuTimeout(TransientError):
    """qemu-img exceeded its wall-clock limit and was killed."""

    code = "qemu_timeout"


class StoreUnavailable(TransientError):
    """A store refused or failed a read or write that may succeed later."""

    code = "store_unavailable"


class StoreCopyFailed(StoreUnavailable):
    """Copying to one or more target stores failed; ``failed_stores`` names them."""

    def __init__(self, message: str, *, code: str | None = None, failed_stores: list[str]) -> None:
        super().__init__(message, code=code)
        self.failed_stores = failed_stores


class NoSpace(TransientError):
    """Not enough free space where the bytes would land."""

    code = "no_space"


class InvalidRequest(PermanentError):
    """The request is malformed: unknown format, bad hash syntax, unknown store."""

    code = "invalid_request"


class SourceNotFound(PermanentError):
    """The source does not exist or refused us for good (missing file, HTTP 4xx)."""

    code = "source_not_found"


class SizeLimitExceeded(PermanentError):
    """The image is larger than a configured cap."""

    code = "size_limit_exceeded"


class HashMismatch(PermanentError):
    """The bytes received do not match the checksum or hash the user declared."""

    code = "checksum_mismatch"


class UnsafeImage(PermanentError):
    """The image failed format detection or a safety check; ``code`` names the reason."""

    code = "unsafe_image"


class ConversionFailed(PermanentError):
    """qemu-img failed to describe or convert an image that passed inspection."""

    code = "conversion_failed"


class QemuOutputTooLarge(ConversionFailed):
    """qemu-img printed more than its output cap (a hostile image's endless map or info)."""

    code = "qemu_output_too_large"


class DatabaseUnavailable(TransientError):
    """The database connection was lost mid-job; the job is retried."""

    code = "database_unavailable"


class StagingLost(TransientError):
    """Staged data a resumed job needs is gone (local and remote): retry, staging again."""

    code = "staging_lost"


class Stalled(TransientError):
    """A job made no progress for the stall timeout; it is retried."""

    code = "stalled"


class ShutDown(TransientError):
    """The worker shut down during the stage; the job is requeued and continues elsewhere."""

    code = "shutdown"


class Cancelled(PermanentError):
    """An administrator cancelled the import."""

    code = "cancelled"


class NotStreamable(PipelineError):
    """An image the early conversion does not follow (never shown: it converts later)."""

    code = "not_streamable"


class NotFound(PipelineError):
    """An image or task id that does not exist."""

    code = "not_found"


class StateError(PipelineError):
    """A status change the state machine refuses."""

    code = "state_error"


class IllegalTransition(StateError):
    """The requested transition is not an edge of the state machine."""

    code = "illegal_transition"


class StateConflict(StateError):
    """The record's status changed under us; the compare-and-set update matched no row."""

    code = "state_conflict"


class ConfigurationError(PipelineError):
    """The settings cannot work (unknown store kind, default store missing, bad URL)."""

    code = "configuration_error"


class AccessError(PipelineError):
    """The caller may not do this; never retried."""

    code = "access_denied"


class Unauthenticated(AccessError):
    """No valid identity: the token is missing, invalid or expired (HTTP 401)."""

    code = "unauthorized"


class Forbidden(AccessError):
    """The policy refuses the action to this caller (HTTP 403)."""

    code = "forbidden"


class OverQuota(AccessError):
    """A quota (unified limit) or a per-image limit would be exceeded (HTTP 413)."""

    code = "over_quota"


class JobInterrupted(BaseException):
    """The running job must stop now: cancelled, lease lost, worker shutting down, or stalled.

    A control-flow signal, not a failure of the import, so it derives from ``BaseException``:
    an ``except Exception`` anywhere in a stage must not swallow it. The runner decides what
    each reason means for the records.
    """

    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"
    STALLED = "stalled"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
