"""The shared fixtures start real services and clean up after themselves."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path


def test_ray_local_runs_tasks_and_dashboard_needs_token(ray_local):
    import ray

    @ray.remote
    def add(a: int, b: int) -> int:
        return a + b

    assert ray.get(add.remote(2, 3)) == 5
    assert ray.cluster_resources()["CPU"] == 2.0
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    token = Path(ray_local.token_path).read_text().strip()
    req = urllib.request.Request(f"{ray_local.dashboard_url}/api/version",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def test_s3_server_bucket_roundtrip(s3_uri):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.pipe(f"{s3_uri}/a.txt", b"hello")
    assert fs.cat(f"{s3_uri}/a.txt") == b"hello"
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_mlflow_server_health(mlflow_server):
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/experiments/search?max_results=5") as r:
        body = json.loads(r.read())
    assert any(e["name"] == "Default" for e in body["experiments"])
