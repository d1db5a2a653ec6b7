"""The Kubernetes Job and the compose file: every variable they set is one neuropipe reads, and it reads them right."""

from pathlib import Path

import pytest
import yaml

from neuropipe import store
from neuropipe.config import _ENVIRONMENT, load_settings

ROOT = Path(__file__).resolve().parents[2]
OTHER_VARIABLES = {"NEUROPIPE_CONFIG", "NEUROPIPE_HOME", "NEUROPIPE_MAX_IDLE", "NEUROPIPE_GIT_COMMIT"}


def worker_environments() -> dict:
    job = yaml.safe_load((ROOT / "workers" / "kubernetes-job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return {"kubernetes": {item["name"]: item["value"] for item in container["env"]},
            "compose": dict(compose["services"]["worker"]["environment"])}


@pytest.mark.parametrize("where", ["kubernetes", "compose"])
def test_workers_are_given_an_object_store_that_neuropipe_reads(where, monkeypatch, tmp_path):
    environment = worker_environments()[where]
    unknown = [name for name in environment if name.startswith(("DJ_", "NEUROPIPE_"))
               and name not in _ENVIRONMENT and name not in OTHER_VARIABLES]
    assert not unknown, f"{where} sets variables neuropipe does not read: {unknown}"
    for name in list(_ENVIRONMENT) + ["NEUROPIPE_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert store.protocol(settings) == "s3" and settings.backend == "postgresql"
    assert store.datajoint_spec(settings)["endpoint"].startswith("http://")


def test_the_compose_file_creates_the_bucket_its_workers_use():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    bucket = worker_environments()["compose"]["NEUROPIPE_STORE"].split("/")[2]
    assert f"store/{bucket}" in " ".join(compose["services"]["bucket"]["entrypoint"])
    minio = compose["services"]["minio"]["environment"]
    workers = worker_environments()["compose"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (workers["NEUROPIPE_STORE_ACCESS_KEY"],
                                                                        workers["NEUROPIPE_STORE_SECRET_KEY"])
    assert compose["services"]["worker"]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
