"""Built-in tools: files in the agent's workspace, sandboxed execution, HTTP and connectors.

Each built-in is an ordinary :class:`avm.tools.registry.Tool`; register the ones a VM offers::

    keys = KeyManager.open(state_dir)
    sandbox = Sandbox()
    workspaces = Workspaces(state_dir / "workspaces", owner=sandbox.owner_for)
    client = HttpClient()
    for tool in (
        read_file_tool(workspaces, redactor=keys.redactor),
        write_file_tool(workspaces),
        execute_tool(sandbox, workspaces, keys=keys),
        http_tool(HttpPolicy(allowed_hosts=frozenset({"api.example.com"})), client=client,
                  keys=keys),
        connector_tool(exchange("https://api.exchange.example"), client=client, keys=keys),
    ):
        vm.tools.add(tool)
"""

from avm.tools.builtin.execute import execute_tool
from avm.tools.builtin.files import read_file_tool, write_file_tool
from avm.tools.builtin.http import (
    HttpClient,
    HttpPolicy,
    Route,
    ServiceConnector,
    connector_hosts,
    connector_tool,
    exchange,
    http_tool,
    news_feed,
    social,
)
from avm.tools.builtin.workspace import Workspaces

__all__ = [
    "HttpClient",
    "HttpPolicy",
    "Route",
    "ServiceConnector",
    "Workspaces",
    "connector_hosts",
    "connector_tool",
    "exchange",
    "execute_tool",
    "http_tool",
    "news_feed",
    "read_file_tool",
    "social",
    "write_file_tool",
]
