"""The import pipeline: the job engine, and the rooms it draws on.

The engine sits here — :mod:`.runner` (walks a job's stages under its lease),
:mod:`.failures` (retry, requeue or fail), :mod:`.progress`, :mod:`.heartbeat`,
:mod:`.context` (the job context and the services it is given), :mod:`.request`,
:mod:`.outputs` (typed stage outputs), :mod:`.observer`, :mod:`.completion` — and its rooms
are:

``stages/``
    one module per stage, each behind the :class:`~.stages.base.Stage` protocol;
``methods/``
    what each import method and admin action does: submit, uploads, copy-image,
    glance-download, deletion, the ``inspect`` check;
``data/``
    the byte path: sources, the one-pass scan, decompression, hashing, holes, fan-out to
    stores, the staging area, free space;
``safety/``
    the format inspector and its checks, qemu-img's second opinion, the qemu-img sandbox (the
    only place qemu-img starts), the URL policy and address pinning.

The names below are what the API, the CLI and the workers use; nothing outside this package
reaches into its rooms.
"""

from __future__ import annotations

from imageport.pipeline.context import Services
from imageport.pipeline.data.scan import coalesce
from imageport.pipeline.data.staging_area import upload_names
from imageport.pipeline.failures import Outcome, fail_import
from imageport.pipeline.methods.check import check_file
from imageport.pipeline.methods.copy_image import submit_copy
from imageport.pipeline.methods.deletion import delete_image
from imageport.pipeline.methods.glance_download import (
    RemoteAuth,
    check_remote_id,
    check_visible,
    file_url,
    remote_auth,
    remote_image,
    resolve_endpoint,
)
from imageport.pipeline.methods.submit import Submitted, import_existing, submit_import
from imageport.pipeline.methods.uploads import UPLOADS, discard_upload, has_upload, receive_upload
from imageport.pipeline.observer import JobObserver, NullObserver
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.runner import context_of, default_owner, run_import
from imageport.pipeline.safety.urlpolicy import UrlPolicy, parse_url, system_resolver, vet
from imageport.pipeline.stages import stage_names

__all__ = [
    "UPLOADS",
    "ImportRequest",
    "JobObserver",
    "NullObserver",
    "Outcome",
    "RemoteAuth",
    "Services",
    "Submitted",
    "UrlPolicy",
    "check_file",
    "check_remote_id",
    "check_visible",
    "coalesce",
    "context_of",
    "default_owner",
    "delete_image",
    "discard_upload",
    "fail_import",
    "file_url",
    "has_upload",
    "import_existing",
    "parse_url",
    "receive_upload",
    "remote_auth",
    "remote_image",
    "resolve_endpoint",
    "run_import",
    "stage_names",
    "submit_copy",
    "submit_import",
    "system_resolver",
    "upload_names",
    "vet",
]
