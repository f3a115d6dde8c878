"""``imageport images …`` and ``imageport tasks …``: read the records, as tables or JSON."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from imageport.cli.common import errors_to_exit, print_json, services, settings

# The records and the pipeline are imported inside the commands: see cli/common.py on
# start-up time.

images_app = typer.Typer(help="List and show image records.", no_args_is_help=True)
tasks_app = typer.Typer(help="List and show import tasks.", no_args_is_help=True)
out_console = Console()


def render_image(doc: dict[str, Any]) -> None:
    """Print one image record as a two-column table on stdout."""
    table = Table(show_header=False, box=None)
    for key in sorted(doc):
        value = doc[key]
        if key == "locations":
            value = "\n".join(loc["url"] for loc in value)
        table.add_row(key, "" if value is None else str(value))
    out_console.print(table)


@images_app.command("list")
def images_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List images, newest first."""
    from imageport.records import repository, serialize

    conf = settings()
    with errors_to_exit(), services(conf) as svc, svc.db.session() as session:
        docs = [serialize.image_to_dict(i, admin=True) for i in repository.list_images(session)]
    if as_json:
        print_json({"images": docs})
        return
    table = Table("id", "name", "status", "disk_format", "size", "virtual_size")
    for d in docs:
        table.add_row(
            d["id"], d["name"] or "", d["status"], d["disk_format"] or "",
            str(d["size"] or ""), str(d["virtual_size"] or ""),
        )  # fmt: skip
    out_console.print(table)


@images_app.command("show")
def images_show(
    image_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one image record."""
    from imageport.records import repository, serialize

    conf = settings()
    with errors_to_exit(), services(conf) as svc, svc.db.session() as session:
        doc = serialize.image_to_dict(repository.get_image(session, image_id), admin=True)
    if as_json:
        print_json(doc)
    else:
        render_image(doc)


@images_app.command("delete")
def images_delete(image_id: str) -> None:
    """Delete an image at once: cancel its import if one runs, remove every stored copy."""
    from imageport.pipeline import delete_image

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        done = delete_image(svc, image_id)
    typer.echo(f"image {image_id} deleted")
    if done.stopping_task_id:
        typer.echo(
            f"import {done.stopping_task_id} is stopping; its worker removes the data it wrote"
        )
    if done.locations_left:
        typer.echo(
            f"{done.locations_left} stored copies could not be deleted yet; the reaper retries",
            err=True,
        )


@tasks_app.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help="Only tasks with this status.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List import tasks, newest first."""
    from imageport.records import repository, serialize

    conf = settings()
    with errors_to_exit(), services(conf) as svc, svc.db.session() as session:
        docs = [serialize.task_to_dict(t) for t in repository.list_tasks(session, status=status)]
    if as_json:
        print_json({"tasks": docs})
        return
    table = Table("id", "status", "image_id", "error_code", "message", "updated_at")
    for d in docs:
        table.add_row(
            d["id"], d["status"], d["image_id"] or "", d.get("error_code") or "",
            d["message"] or "", d["updated_at"],
        )  # fmt: skip
    out_console.print(table)


@tasks_app.command("show")
def tasks_show(
    task_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one task with its stage runs."""
    from imageport.records import repository, serialize

    conf = settings()
    with errors_to_exit(), services(conf) as svc, svc.db.session() as session:
        task = repository.get_task(session, task_id)
        doc = serialize.task_to_dict(task, repository.stage_runs(session, task_id))
    if as_json:
        print_json(doc)
        return
    render_image({k: v for k, v in doc.items() if k != "stages"})
    table = Table("stage", "attempt", "status", "bytes", "error_code", "error")
    for run in doc["stages"]:
        done, total = run["bytes_done"], run["bytes_total"]
        table.add_row(
            run["stage"], str(run["attempt"]), run["status"],
            f"{done}/{total}" if total else str(done),
            run["error_code"] or "", run["error_message"] or "",
        )  # fmt: skip
    out_console.print(table)
