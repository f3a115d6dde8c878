"""Glance's reserved image properties for import bookkeeping: one constant for each name.

Clients read these to follow an import (``openstack image show``), so the names are Glance's.
Users may not set anything under :data:`RESERVED_PREFIX`; only the pipeline writes them.
"""

from __future__ import annotations

#: Glance's reserved property namespace.
RESERVED_PREFIX = "os_glance"
#: The stores an import is still writing to, comma-separated.
IMPORTING_TO_STORES = "os_glance_importing_to_stores"
#: The stores an import failed to write to, comma-separated.
FAILED_IMPORT = "os_glance_failed_import"
#: The id of the image's latest import task.
IMPORT_TASK = "os_glance_import_task"
