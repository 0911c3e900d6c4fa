"""`prismops ui`: one built-in dashboard page over the sink's ClickHouse tables (cost lines, routing decisions,
anomalies, GPU allocations) and the budget definitions, with JSON endpoints the page polls.

Layers: `data` assembles JSON from query results (pure functions, no I/O), `assets` installs the chart library
from npm into a cache folder, `server` serves the page, the library and the JSON (stdlib ThreadingHTTPServer).
"""
