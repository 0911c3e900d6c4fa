"""What a service needs to ask the router which model to call."""

from __future__ import annotations

import time
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway_grpc.routing.v1 import routing_pb2, routing_pb2_grpc

ROUTER_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["Router"].full_name


class RouterClient:
    """One channel to a gateway. Errors surface as grpc.RpcError (INVALID_ARGUMENT names the bad field)."""

    def __init__(self, target: str):
        self.target = target
        self._channel = grpc.insecure_channel(target)
        self._router = routing_pb2_grpc.RouterStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def decide(
        self,
        tenant: str,
        service: str,
        feature: str,
        allowed: Iterable[tuple[str, str]],
        latency_slo_ms: float,
        expected_input_tokens: int = 0,
        expected_output_tokens: int = 0,
        request_id: str = "",
        timeout: float = 2.0,
    ) -> routing_pb2.DecideResponse:
        request = routing_pb2.DecideRequest(
            tenant=tenant,
            service=service,
            feature=feature,
            request_id=request_id,
            allowed_models=[routing_pb2.ModelRef(provider=p, model=m) for p, m in allowed],
            latency_slo_ms=latency_slo_ms,
            expected_input_tokens=expected_input_tokens,
            expected_output_tokens=expected_output_tokens,
        )
        return self._router.Decide(request, timeout=timeout)

    def health(self, service: str = ROUTER_SERVICE, timeout: float = 2.0) -> int:
        """The HealthCheckResponse.ServingStatus the gateway reports for `service`."""
        return self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Poll the health service until the router says SERVING; False when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if self.health(timeout=min(1.0, remaining)) == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
