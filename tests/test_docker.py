"""Docker cannot run here: check what can be checked (the compose file, the images' steps)."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def test_compose_file_parses_and_wires_the_service():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "cpu-worker", "gpu-worker", "flower"}
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    for name in ("api", "cpu-worker", "gpu-worker", "flower"):
        s = services[name]
        assert "jobs:/data/jobs" in s["volumes"], name
        assert s["environment"]["SONOMASK_BROKER_URL"].startswith("redis://redis:6379")
        assert s["environment"]["SONOMASK_WORKSPACE"] == "/data/jobs"
    assert services["cpu-worker"]["command"][:4] == ["sonomask", "worker", "--queues", "cpu"]
    assert services["gpu-worker"]["command"][:4] == ["sonomask", "worker", "--queues", "gpu"]
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia"


def test_images_install_with_the_ci_setup_script():
    text = (DOCKER / "Dockerfile").read_text()
    assert text.count("./scripts/setup") == 2  # cpu and cuda targets
    ci = (DOCKER.parent / ".ci" / "run").read_text()
    assert "./scripts/setup" in ci
