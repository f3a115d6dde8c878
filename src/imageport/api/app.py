"""The FastAPI application: services at start-up, the routers, the error handlers.

The app shares the workers' records, staging area, stores and broker. With the in-process
broker (``memory://``) it also runs the import worker in this process, so one ``imageport api``
is a whole single-machine deployment; otherwise imports are queued for ``imageport worker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager

from fastapi import Depends, FastAPI

from imageport.access.authn import TokenGate, build_authenticator
from imageport.access.policy import Policy
from imageport.access.quotas import Quotas
from imageport.api import actions, data, discovery, errors, images, imports, listing, members, tasks
from imageport.api.auth import AuthMiddleware
from imageport.api.body_timeout import BodyTimeoutMiddleware
from imageport.api.deps import ApiContext
from imageport.api.request_id import RequestIdMiddleware
from imageport.api.upload_slots import UploadSlots
from imageport.api.versions import CURRENT_VERSION, VersionNegotiationMiddleware
from imageport.config import Settings
from imageport.pipeline import Services
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker
from imageport.workers.embedded import EmbeddedWorker

#: The Image API version this server reports as current.
API_VERSION = CURRENT_VERSION


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """Build the application; services are opened at start-up and closed at shutdown.

    Args:
        settings: the settings (``broker_url`` decides embedded or distributed mode).
        services: already opened services to use instead (the caller closes them).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First: a policy_file that is missing or unreadable stops the start-up before
        # anything is opened.
        policy = Policy.from_settings(settings)
        with ExitStack() as stack:
            svc = services
            if svc is None:
                svc = Services.from_settings(settings)
                stack.callback(svc.close)
            if settings.is_embedded or svc.db.is_sqlite:
                svc.db.upgrade()  # the embedded database migrates itself, as in the CLI
            if settings.is_embedded:
                # A long-running server reaps too: expired leases, uploads never imported.
                worker = stack.enter_context(EmbeddedWorker(svc, reaper=True))
                enqueue = worker.actors.enqueue_import
            else:
                opened = svc  # bound for the lambda: mypy cannot narrow a closure variable
                enqueue = declare_actors(build_broker(settings), lambda: opened).enqueue_import
            quotas = Quotas.from_settings(settings)
            app.state.api = ApiContext(services=svc, enqueue=enqueue, quotas=quotas, policy=policy)
            yield

    app = FastAPI(
        title="imageport Image API",
        version=API_VERSION,
        description="OpenStack Image API v2 (Glance compatible) served by imageport.",
        lifespan=lifespan,
        dependencies=[Depends(errors.refuse_nul)],
        docs_url=None,  # no HTML pages; the OpenAPI document is at /openapi.json
        redoc_url=None,
    )
    app.state.settings = settings
    errors.install(app)
    gate = TokenGate(settings.api_token) if settings.api_token is not None else None
    # Innermost: as in Glance, the request id is given once the caller is authenticated.
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(AuthMiddleware, authenticator=build_authenticator(settings), gate=gate)
    # Every request body read is timed, whoever reads it.
    app.add_middleware(BodyTimeoutMiddleware, timeout=settings.client_socket_timeout)
    # Added last, so outermost: Glance negotiates the version before authenticating.
    app.add_middleware(VersionNegotiationMiddleware)
    app.state.upload_slots = UploadSlots.from_settings(settings)
    for module in (discovery, listing, images, actions, data, imports, members, tasks):
        app.include_router(module.router)
    return app
