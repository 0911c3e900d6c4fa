"""TLS by configuration: the gateway serves over TLS when given a certificate and key, and a client that trusts
the certificate's root talks to it while a plaintext client cannot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.server import DiscardingPublisher, ServeError, build_server  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.testing import free_port  # noqa: E402


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return key, cert


def test_tls_gateway_answers_a_client_that_trusts_its_certificate_and_refuses_plaintext(certificate):
    key, cert = certificate
    settings = Settings().with_overrides(gateway={
        "host": "127.0.0.1", "port": free_port(), "tls_cert_file": str(cert), "tls_key_file": str(key),
    })
    server = build_server(settings, LiveModelTable(), publisher=DiscardingPublisher())
    server.start()
    try:
        target = f"localhost:{settings.gateway.port}"
        with RouterClient(target, tls_root_cert=cert.read_bytes()) as secure:
            answer = secure.decide("acme", "search", "rerank", [("openai", "gpt-4o-mini")], latency_slo_ms=500)
            assert (answer.model.provider, answer.model.model) == ("openai", "gpt-4o-mini")
        with RouterClient(target) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                plaintext.decide("acme", "search", "rerank", [("openai", "gpt-4o-mini")], latency_slo_ms=500,
                                 timeout=2.0)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_a_certificate_without_its_key_is_refused_at_start(certificate):
    _, cert = certificate
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "tls_cert_file": str(cert)})
    with pytest.raises(ServeError, match="tls_key_file is not"):
        build_server(settings, LiveModelTable(), publisher=DiscardingPublisher())
