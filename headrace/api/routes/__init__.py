"""The API's endpoints: one router per resource, included by `create_app` in this order
(the order of the OpenAPI document's paths)."""

from headrace.api.routes import (
    flags,
    listing,
    migration,
    projections,
    runs,
    service,
    streams,
    workflows,
)

ROUTERS = (
    service.router,
    workflows.router,
    flags.router,
    migration.router,
    projections.router,
    listing.router,  # before runs: /v1/runs/count is no run id
    runs.router,
    streams.router,
)

__all__ = ["ROUTERS"]
