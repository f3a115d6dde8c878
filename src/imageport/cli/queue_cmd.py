"""``imageport queue``: what waits and what runs, by project, and the broker's queue depth."""

from __future__ import annotations

from typing import Annotated

import typer

from imageport.cli.common import errors_to_exit, print_json, services, settings


def queue_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each project's queued and running imports, and the broker's queue depth.

    Queued imports include those waiting for their project's in-flight cap
    (max_inflight_per_project) or for space; only projects with queued or running imports
    are listed.
    """
    # Imported here, not at the top: see cli/common.py on start-up time.
    from imageport.workers.queues import project_queues, queue_depth

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        with svc.db.session() as session:
            projects = project_queues(session)
        depth = queue_depth(conf)
    report = {
        "broker_queue_depth": depth,
        "queued": sum(p.queued for p in projects),
        "running": sum(p.running for p in projects),
        "projects": [p.as_dict() for p in projects],
    }
    if as_json:
        print_json(report)
        return
    typer.echo(f"broker queue depth: {'unknown' if depth is None else depth}")
    typer.echo(f"{'project':<36} {'queued':>7} {'running':>7} {'at cap':>7} {'no space':>8}")
    for p in projects:
        typer.echo(
            f"{p.project or '(none)':<36} {p.queued:>7} {p.running:>7} "
            f"{p.waiting_for_capacity:>7} {p.waiting_for_space:>8}"
        )
