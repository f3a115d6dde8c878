"""The Image API v2 server (``imageport api``): images, data, imports, members, tasks.

A FastAPI application over the same records, staging area, stores and broker as the workers.
Modules are split by resource: :mod:`~imageport.api.images` (CRUD, PATCH, tags),
:mod:`~imageport.api.listing` (the list filters, sort and paging), :mod:`~imageport.api.data`
(stage, upload, download), :mod:`~imageport.api.imports`, :mod:`~imageport.api.members`,
:mod:`~imageport.api.tasks`, :mod:`~imageport.api.discovery` (versions, info, schemas, health);
:mod:`~imageport.api.auth` and :mod:`~imageport.api.access` decide who sees and changes what,
:mod:`~imageport.api.errors` writes Glance's error shape. :func:`create_app` builds the app.
"""

from __future__ import annotations

from imageport.api.app import create_app

__all__ = ["create_app"]
