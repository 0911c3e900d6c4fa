"""Pipeline metrics every component shares: records in and out per topic, and the HTTP endpoint that serves them.

The worker serves its registry on the Faust web port (`/metrics`); the sink and the gateway, which have no web
server of their own, call `serve_metrics` to expose the same registry on their `metrics_port`.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter as PromCounter
from prometheus_client import start_http_server

log = logging.getLogger(__name__)

EVENTS_IN = PromCounter("prismops_events_in_total", "events consumed (each item of a batch record counts)", ["topic"])
EVENTS_OUT = PromCounter("prismops_events_out_total", "events produced (each item of a batch record counts)", ["topic"])


def serve_metrics(port: int, component: str, host: str = "127.0.0.1") -> bool:
    """Expose /metrics on host:port in a daemon thread; 0 turns it off. A taken port is logged, not fatal:
    metrics must never stop the data path."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("%s metrics endpoint not started on %s:%d: %s", component, host, port, exc)
        return False
    log.info("%s metrics on http://%s:%d/metrics", component, host, port)
    return True
