"""``imageport import``: create an image and an import task, and (unless --no-wait) wait."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from imageport.cli.common import (
    errors_to_exit,
    services,
    settings,
)
from imageport.errors import InvalidRequest


def import_command(
    source: Annotated[str, typer.Argument(help="A local file path or an http(s) URL.")],
    name: Annotated[str | None, typer.Option(help="Image name (default: the file name).")] = None,
    disk_format: Annotated[
        str | None,
        typer.Option(help="Declared disk format (default: from the file extension)."),
    ] = None,
    container_format: Annotated[str, typer.Option(help="Container format.")] = "bare",
    target_format: Annotated[
        str | None,
        typer.Option(
            help="Convert to this disk format (env IMAGEPORT_TARGET_FORMAT).", show_default=False
        ),
    ] = None,
    store: Annotated[
        list[str] | None, typer.Option("--store", help="Target store id (repeatable).")
    ] = None,
    all_stores: Annotated[
        bool, typer.Option("--all-stores", help="Import to every configured store.")
    ] = False,
    allow_failure: Annotated[
        bool,
        typer.Option(
            "--allow-failure",
            help="Keep the image active if some stores fail (all_stores_must_succeed=false).",
        ),
    ] = False,
    checksum: Annotated[str | None, typer.Option(help="Expected MD5 of the source.")] = None,
    hash_spec: Annotated[
        str | None, typer.Option("--hash", help="Expected secure hash, ALGO:HEX.")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once queued.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Import a disk image: stage, verify, inspect, convert, copy to stores, activate."""
    # Imported here, not at the top: see cli/common.py on start-up time.
    from imageport.cli.jobs import run_job
    from imageport.pipeline import ImportRequest, submit_import

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        method = "web-download" if urlsplit(source).scheme in ("http", "https") else "local-file"
        if method == "local-file":
            source = str(Path(source).resolve())
        request = ImportRequest.with_hash(
            hash_spec,
            method=method,
            source=source,
            disk_format=disk_format or _format_from_name(source),
            container_format=container_format,
            target_format=target_format or conf.target_format,
            stores=tuple(svc.stores) if all_stores else tuple(store or ()),
            all_stores_must_succeed=not allow_failure,
            checksum=checksum,
        )
        submitted = submit_import(svc, request, name=name or _name_from(source))
        run_job(svc, submitted, no_wait=no_wait, as_json=as_json, what="import")


def _format_from_name(source: str) -> str:
    from imageport.config import DISK_FORMATS

    suffix = Path(urlsplit(source).path).suffix.lstrip(".").lower()
    if suffix == "img":
        return "raw"
    if suffix in DISK_FORMATS:
        return suffix
    raise InvalidRequest(f"cannot tell the disk format of {source}: pass --disk-format")


def _name_from(source: str) -> str:
    return Path(urlsplit(source).path).name or source
