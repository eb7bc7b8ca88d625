"""Docker cannot run here: check what can be checked (the compose file, the images' steps)."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def test_compose_file_parses_and_wires_the_service():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {
        *("redis", "rabbitmq", "api", "cpu-worker", "gpu-worker", "flower", "watch")
    }
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]  # started only when asked for
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    for name in ("api", "cpu-worker", "gpu-worker", "flower"):
        s = services[name]
        assert "jobs:/data/jobs" in s["volumes"], name
        broker = s["environment"]["SONOMASK_BROKER_URL"]  # Redis unless the operator says
        assert broker == "${SONOMASK_BROKER_URL:-redis://redis:6379/0}", broker
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


def test_rabbitmq_lets_long_stages_finish():
    """RabbitMQ cuts off an unacknowledged delivery after consumer_timeout (30 min by default);
    late acknowledgement keeps a stage's message unacknowledged for the whole stage."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    mounts = compose["services"]["rabbitmq"]["volumes"]
    assert "./rabbitmq.conf:/etc/rabbitmq/conf.d/90-sonomask.conf:ro" in mounts
    lines = (DOCKER / "rabbitmq.conf").read_text().splitlines()
    conf = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=", 1) for line in lines if "=" in line and line[0] != "#")
    )
    assert int(conf["consumer_timeout"]) >= 24 * 3600 * 1000
