"""Schemathesis against the real app (in-process ASGI): every operation of /openapi.json is
called with generated requests, valid and not, and every answer must be documented, match
its schema and never be a server error.

The job queue is a fake ``submit_fn`` (the job is registered in the workspace, nothing is
sent); a private Redis is the broker ``/healthz`` reaches. The examples in the OpenAPI document name real files
(a real clip and mask under the media root), so the example requests succeed end to end.
Bounded: 30 positive and 30 negative examples per operation, derandomized (the same
requests every run), about a minute in all.
"""

from __future__ import annotations

import os

import cv2
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from scene import first_mask, make_scene, write_clip
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service import Redis

from worker.jobs import store as jobs

pytestmark = pytest.mark.slow
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis")
    media = root / "media" / "shoot" / "day1"  # the paths the OpenAPI examples name
    media.mkdir(parents=True)
    scene = make_scene(duration=2.0, width=96, height=64, fps=25.0)
    write_clip(scene, media / "take3.mov", stereo=True, crf=30)
    cv2.imwrite(str(media / "take3_guitar.png"), first_mask(scene, "a"))
    redis = Redis(root / "redis")
    redis.start()
    env = {
        "SONOMASK_WORKSPACE": str(root / "jobs"),
        "SONOMASK_MEDIA_ROOT": str(root / "media"),
        "SONOMASK_BROKER_URL": f"{redis.url}/0",
        "SONOMASK_RESULT_BACKEND": f"{redis.url}/1",
        "SONOMASK_MAX_UPLOAD_BYTES": str(2_000_000),
    }
    saved = {k: os.environ.get(k) for k in [*env, "SONOMASK_API_TOKEN", "SONOMASK_MODEL"]}
    os.environ.update(env)
    os.environ.pop("SONOMASK_API_TOKEN", None)
    os.environ.pop("SONOMASK_MODEL", None)
    from worker.http.api import create_app

    def fake_submit(spec, cfg, job_id: str) -> str:
        jobs.create_job(cfg.workspace, spec, job_id)
        return job_id

    try:
        app = create_app(submit_fn=fake_submit)
        app.workspace = root / "jobs"
        yield app
    finally:
        redis.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(strategy, failures: list[str], label: str, examples: int) -> None:
    """Call the app with ``examples`` cases from ``strategy``; record the first failure."""

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def check(case) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    try:
        check()
    except Unsatisfiable:
        pass  # a negative run of an operation with nothing to get wrong (plain strings only)
    except Exception as exc:  # noqa: BLE001 - collected, reported together below
        failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:3000]}")


def test_no_server_errors_and_no_undocumented_answers(app):
    """Valid (positive) and invalid (negative) requests to every operation, plus the
    document's own examples: no 5xx, every status, content type, header and body as
    documented."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for op in operations:
        for strategy in op.get_strategies_from_examples():
            _run(strategy, failures, f"{op.label} (example)", 5)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(op.as_strategy(generation_mode=mode), failures, f"{op.label} ({mode})", 30)
    assert not failures, "\n\n".join(failures)
    # The documented example of POST /v1/jobs went through end to end (probe, mask, queue).
    queued = list(app.workspace.glob("*/spec.json"))
    assert queued, "no generated request was ever accepted"


def test_the_document_says_what_the_api_answers(app):
    """Validation errors are 400 Problems (never FastAPI's undocumented 422 schema); the
    refusals each route really gives are listed; /v1/uploads documents its bodies."""
    from fastapi.testclient import TestClient

    c = TestClient(app)
    doc = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)
    submit = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"400", "401", "403", "413", "415", "422", "503"} <= set(submit)
    assert set(doc["paths"]["/v1/uploads"]["post"]["requestBody"]["content"]) >= {
        "application/json",
        "multipart/form-data",
        "application/octet-stream",
    }
    assert "404" in doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    r = c.get("/v1/jobs?limit=notanumber")
    assert r.status_code == 400 and "limit" in r.json()["detail"]
    r = c.request("OPTIONS", "/v1/jobs/0123456789abcdef")
    assert r.status_code == 204 and "DELETE" in r.headers["allow"]
