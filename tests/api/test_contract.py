"""The OpenAPI contract: generated from the models, and fuzzed against a live server."""

import shutil
import subprocess
import sys

import pytest
import requests

from conftest import ROOT, running_server

KEY = "contract-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoints):
    with running_server(tmp_path_factory.mktemp("contract"), checkpoints, API_KEY=KEY,
                        MAX_QUEUE_SIZE="1000", SYNC_TIMEOUT_SECONDS="5") as started:
        yield started


def test_openapi_document_describes_every_route_and_the_request_models(server):
    assert requests.get(f"{server['url']}/openapi.json").status_code == 401
    document = requests.get(f"{server['url']}/openapi.json",
                            headers={"X-API-Key": KEY}).json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/health", "/livez", "/readyz", "/metrics", "/queue",
                                      "/generate", "/generate/sync",
                                      "/depth", "/depth/sync", "/normal", "/normal/sync",
                                      "/segment", "/job/{job_id}",
                                      "/job/{job_id}/download", "/job/{job_id}/events",
                                      "/openapi.json"}
    generate = document["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["output_format"]["enum"] == ["glb", "ply", "obj", "stl", "usdz"]
    assert {"mask", "mask_url", "masks"} <= set(generate)
    status = document["components"]["schemas"]["JobStatus"]["properties"]
    assert "objects" in status
    assert generate["seed"]["default"] == 42 and generate["with_texture"]["default"] is True
    depth = document["components"]["schemas"]["DepthRequest"]["properties"]
    assert depth["processing_res"]["default"] == 768
    assert set(depth["output"]["enum"]) == {"png", "png16", "npy", "color", "glb", "ply"}
    assert (depth["fov_degrees"]["minimum"], depth["fov_degrees"]["maximum"]) == (10, 150)
    assert "geometry" in document["components"]["schemas"]["DepthResult"]["properties"]
    assert depth["model"]["default"] == "depth-d-v2-0-disparity"
    normal = document["components"]["schemas"]["NormalRequest"]["properties"]
    assert set(normal["output"]["enum"]) == {"png", "png16", "npy"}
    sync = document["paths"]["/normal/sync"]["post"]
    assert sync["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/NormalResult"
    assert "image" in sync["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]
    assert {"frame", "range"} <= set(document["components"]["schemas"]["NormalResult"][
        "properties"])
    assert {"model", "frame", "range", "min", "max"} <= set(status)  # a map job's status
    segment = document["paths"]["/segment"]["post"]
    assert segment["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/SegmentResult"
    assert "image" in segment["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]
    mask = document["components"]["schemas"]["SegmentResult"]["properties"]
    assert mask["source"]["enum"] == ["alpha", "rembg", "center"]
    assert "webhook" not in document["components"]["schemas"]["SegmentRequest"]["properties"]


def test_each_state_field_lists_the_words_clients_read_inline():
    """The states are enums in the code; the document still lists each state field's words
    inline, as it did when they were Literals, and they are the enums' values: a client's
    generated code and its checks of `state` see no change."""
    from jobs.state import JobState
    from pipelines import PipelineState
    from schemas import HealthStatus, ServerState, openapi_document
    from workers.worker import WorkerState

    schemas = openapi_document(secured=True)["components"]["schemas"]
    health = schemas["Health"]["properties"]

    def inline(field: dict, states) -> list[str]:
        assert "$ref" not in str(field)
        assert field["enum"] == [state.value for state in states]
        return field["enum"]

    assert inline(health["status"], HealthStatus) == ["healthy", "loading", "unhealthy"]
    assert inline(health["state"], ServerState) == ["starting", "ready", "busy", "setup_failed",
                                                    "unhealthy"]
    assert inline(health["pipelines"]["additionalProperties"], PipelineState) == [
        "loading", "ready", "failed"]
    assert inline(schemas["WorkerStatus"]["properties"]["state"], WorkerState) == [
        "starting", "loading", "ready", "busy", "restarting", "failed"]
    assert inline(schemas["JobStatus"]["properties"]["status"], JobState) == [
        "queued", "processing", "completed", "failed", "cancelled"]


# A fixed seed: a CI run is reproducible. Under some seeds schemathesis 4.32.5 itself stops
# with "Runtime Error: Unsupported type: 'Binary'" while drawing a negative form body with a
# file field (specs/openapi/negative/__init__.py:484, a filter that validates the file); seed
# 163925582342775855382553637479348260208 does so on POST /depth/sync. Try others by hand.
SCHEMATHESIS_SEED = "1"


@pytest.mark.skipif(shutil.which("schemathesis") is None and not (
    ROOT / ".venv/bin/schemathesis").exists(), reason="schemathesis is not installed")
def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(server, tmp_path):
    """Bounded fuzzing: no 5xx from anything a client can send, every answer as documented."""
    # Every 5xx is a failure but the documented answers to load and time: a full queue
    # (503) and a sync job still running at SYNC_TIMEOUT_SECONDS (504; form uploads carry
    # real photos, and a 1x1 one at processing_res 768 takes seconds on these CPUs).
    (tmp_path / "schemathesis.toml").write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "503", "504"]\n')
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file",
               str(tmp_path / "schemathesis.toml"), "run",
               f"{server['url']}/openapi.json", "--header", f"X-API-Key: {KEY}",
               "--checks", "not_a_server_error,status_code_conformance,"
                           "content_type_conformance,response_schema_conformance",
               "--max-examples", "15", "--workers", "2", "--phases", "examples,coverage,fuzzing",
               "--suppress-health-check", "all", "--seed", SCHEMATHESIS_SEED]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    requests.get(f"{server['url']}/health", timeout=5).raise_for_status()
    assert KEY not in server["log"].read_text()  # sent on every request, never logged
