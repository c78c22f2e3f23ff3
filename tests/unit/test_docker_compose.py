"""docker-compose.yml publishes only the API, and the Prefect server it keeps on the compose
network requires the same auth string every client sends; the image runs unprivileged.
(CI has no Docker engine: this reads the files.)"""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_only_the_api_is_published_beyond_loopback():
    published = {
        name: ports for name, service in compose()["services"].items() if (ports := service.get("ports"))
    }
    assert published.pop("api") == ["8000:8000"]
    assert "prefect" not in published
    for name, ports in published.items():  # opt-in helpers (profiles) on the host's loopback only
        assert all(port.startswith("127.0.0.1:") for port in ports), name
        assert compose()["services"][name].get("profiles"), name


def test_prefect_requires_the_auth_string_every_client_sends():
    services = compose()["services"]
    required = services["prefect"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert required.startswith("${DSPY_PREFECT_AUTH:?")  # no default: compose refuses to start without it
    clients = [s for s in services.values() if "PREFECT_API_URL" in (s.get("environment") or {})]
    assert {"register", "worker", "api"} <= {n for n, s in services.items() if s in clients}
    assert all(s["environment"]["PREFECT_API_AUTH_STRING"] == required for s in clients)
    origins = services["prefect"]["environment"]["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"]
    assert "*" not in origins


def test_image_runs_as_an_unprivileged_user():
    users = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
