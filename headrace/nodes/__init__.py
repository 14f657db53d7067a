"""Node executors: how a worker runs one attempt of a `task`, `http` or `agent` node."""

from headrace.nodes.agent import AgentExecutor
from headrace.nodes.base import NodeExecutor, Outcome
from headrace.nodes.http import HttpExecutor
from headrace.nodes.http_call import HttpRequest, call_http, redact
from headrace.nodes.task import TaskRegistry

__all__ = [
    "AgentExecutor",
    "HttpExecutor",
    "HttpRequest",
    "NodeExecutor",
    "Outcome",
    "TaskRegistry",
    "call_http",
    "redact",
]
