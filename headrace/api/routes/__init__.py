"""The API's endpoints: one router per resource, included by `create_app` in this order
(the order of the OpenAPI document's paths)."""

from headrace.api.routes import flags, migration, runs, service, streams, workflows

ROUTERS = (
    service.router,
    workflows.router,
    flags.router,
    migration.router,
    runs.router,
    streams.router,
)

__all__ = ["ROUTERS"]
