"""The stack's schema registry (infra/registry.py) without starting it: where it is built and kept, how it is run
and recognised, and when the stack includes it. The real build and server: tests/integration/
test_schema_registry_on_stack.py."""

from __future__ import annotations

import zipfile
from pathlib import Path

from prismops.infra.config import INFRA_DIR, StackPaths
from prismops.infra.registry import (
    APICURIO_VERSION,
    CCOMPAT_PATH,
    INDEX_APP_JAR,
    RegistryServer,
    attach_registry,
    local_registry_url,
    registry_url,
)
from prismops.infra.stack import LocalStack
from prismops.settings import Settings


def settings_at(home: Path) -> Settings:
    return Settings().with_overrides(stack={"home": home})


def test_the_build_and_its_data_live_under_the_stack_cache_and_home(tmp_path):
    settings = settings_at(tmp_path)
    server = RegistryServer(settings, StackPaths.from_settings(settings.stack))
    cache = tmp_path.resolve() / "cache"
    assert server.root == cache / f"apicurio-registry-{APICURIO_VERSION}"
    assert server.dist.parent == server.root and not server.installed()
    assert server.data_dir == tmp_path.resolve() / "registry"
    assert server.address == "127.0.0.1:18081"
    assert server.url == f"http://127.0.0.1:18081{CCOMPAT_PATH}"
    assert "-Dquarkus.http.port=18081" in server.ownership_args()


def test_clients_use_the_configured_url_else_the_stacks_when_it_runs_one(tmp_path):
    settings = settings_at(tmp_path)
    assert registry_url(settings) == ""  # no registry: Avro single-object
    assert local_registry_url(settings) == "http://127.0.0.1:18081/apis/ccompat/v7"


def test_the_app_jars_own_properties_are_kept_and_its_beans_indexed(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    with zipfile.ZipFile(app / "apicurio-registry-app.jar", "w") as jar:
        jar.writestr("application.properties", "%prod.quarkus.datasource.db-kind=h2\n%prod.quarkus.package.type=legacy-jar\n")
    text = RegistryServer.application_properties(app)
    assert "%prod.quarkus.datasource.db-kind=h2" in text
    assert "quarkus.package.type" not in text
    assert text.endswith(INDEX_APP_JAR)


def test_the_pom_pins_what_central_lacks():
    pom = (INFRA_DIR / "apicurio" / "pom.xml").read_text()
    assert f"<apicurio.version>{APICURIO_VERSION}</apicurio.version>" in pom
    assert "<artifactId>everit-json-schema</artifactId>" in pom
    assert "<version>0.1.10.Final</version>" in pom


def test_the_stack_includes_the_registry_only_when_asked_or_running(tmp_path):
    settings = settings_at(tmp_path)
    stack = LocalStack(settings)
    attach_registry(stack, start=False)
    assert "registry" not in [s.name for s in stack.servers]
    stack = LocalStack(settings)
    attach_registry(stack, start=True)
    assert "registry" in [s.name for s in stack.servers]
