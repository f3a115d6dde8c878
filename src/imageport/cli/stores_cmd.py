"""``imageport stores list``: the configured stores (id, kind, default, read-only, free space)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from imageport.cli.common import errors_to_exit, print_json, settings

stores_app = typer.Typer(help="List the configured stores.", no_args_is_help=True)
out_console = Console()


@stores_app.command("list")
def stores_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the stores images can be imported to (no database needed)."""
    # Imported here, not at the top: see cli/common.py on start-up time.
    from imageport.stores import build_stores

    conf = settings()
    with errors_to_exit():
        stores = build_stores(conf)
        docs: list[dict[str, Any]] = [
            {
                "id": store_id,
                "kind": store.kind,
                "default": store_id == conf.default_store,
                "read_only": store.read_only,
                "free_bytes": store.free_bytes(),
            }
            for store_id, store in stores.items()
        ]
    if as_json:
        print_json({"stores": docs})
        return
    table = Table("id", "kind", "default", "read-only", "free")
    for d in docs:
        free = "" if d["free_bytes"] is None else str(d["free_bytes"])
        table.add_row(d["id"], d["kind"], _yes(d["default"]), _yes(d["read_only"]), free)
    out_console.print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else ""
