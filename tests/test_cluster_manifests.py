"""ray-cluster.yaml, the container image and the KubeRay / Kubernetes manifests agree with each
other and with the project: one image tag, one Ray version, valid `landslide-batch` commands."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from landslide_batch.cli import build_parser
from landslide_batch.jobs.schedule import load_schedule

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def docs(name: str) -> dict[str, dict]:
    """Kind -> manifest of a multi-document YAML file."""
    return {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / name).read_text())}


def images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in images(v)]
    if isinstance(node, list):
        return [i for v in node for i in images(v)]
    return []


def commands(line: str) -> list[list[str]]:
    """`a && b` -> [argv of a, argv of b]; each must parse as a landslide-batch command."""
    argvs = [shlex.split(part) for part in line.split("&&")]
    for argv in argvs:
        assert argv[0] == "landslide-batch", argv
        build_parser().parse_args(argv[1:])
    return argvs


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())


@pytest.fixture(scope="module")
def image(launcher) -> str:
    return launcher["docker"]["image"]


@pytest.fixture(scope="module")
def ray_version() -> str:
    return re.search(r"^ARG RAY_VERSION=(\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


def test_one_image_tag_everywhere(launcher, image):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image.rsplit(":", 1)[1].startswith(version)
    found = {image}
    for name in ("raycluster.yaml", "rayjob.yaml", "cronjob.yaml"):
        found |= set(images(list(docs(name).values())))
    assert found == {image}
    assert f"-t {image} ." in (CLUSTER / "README.md").read_text()
    assert f"-t {image} ." in (CLUSTER / "Dockerfile").read_text()


def test_image_pins_ray_and_installs_through_the_constraints(ray_version):
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert ray_version == ray.__version__  # clients (this venv) and cluster run the same Ray
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu", dockerfile, re.M)
    install = re.search(r"^RUN pip install (.*?)(?:&&|$)", dockerfile.replace("\\\n", " "), re.M).group(1)
    assert "-c constraints.txt" in install and "-c cluster/constraints-image.txt" in install
    assert '"ray[data,train,default]==${RAY_VERSION}"' in install and install.split()[-1] == "."
    for needed in ("constraints.txt", "pyproject.toml", "README.md", "landslide_batch", "training",
                   "cluster/constraints-image.txt"):
        assert re.search(rf"^COPY .*{re.escape(needed)}", dockerfile, re.M), needed

    pins = dict(line.split("==", 1) for line in (CLUSTER / "constraints-image.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["ray"] == ray_version
    assert "torch" not in pins and "torchvision" not in pins  # pinned once, in constraints.txt


def test_launcher_config(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != launcher["head_node_type"] and t["resources"].get("GPU")]
    assert gpu and all(t["max_workers"] > t["min_workers"] for t in gpu)  # autoscaling
    assert launcher["max_workers"] >= max(t["max_workers"] for t in gpu)
    project = next(k for k, v in launcher["file_mounts"].items() if v == ".")
    install = next(c for c in launcher["setup_commands"] if "pip install" in c)
    assert f"-c {project}/constraints.txt" in install and install.split()[-1] == project
    assert any("ray start --head" in c and "--dashboard-port=8265" in c for c in launcher["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in launcher["worker_start_ray_commands"])


def test_raycluster(ray_version):
    manifests = docs("raycluster.yaml")
    cluster, pvc = manifests["RayCluster"], manifests["PersistentVolumeClaim"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == ray_version
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] and spec["authOptions"]["mode"] == "token"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:  # every node sees the shared volume at the same path
        assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}]
        assert pod["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    gpu = [g for g in spec["workerGroupSpecs"]
           if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu and all(g["maxReplicas"] > g["minReplicas"] for g in gpu)


def test_rayjob_runs_a_region_job_on_the_cluster():
    cluster = docs("raycluster.yaml")["RayCluster"]
    job = docs("rayjob.yaml")["RayJob"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    run, *rest = commands(job["spec"]["entrypoint"])
    assert run[:2] == ["landslide-batch", "run"] and run[run.index("--executor") + 1] == "ray"
    paths = [run[run.index(flag) + 1] for flag in ("--scene", "--ensemble", "--out")]
    assert all(p.startswith("/data/") for p in paths)
    assert rest == [["landslide-batch", "stac-item", paths[2]]]


def test_cronjob_runs_the_scheduler_against_the_cluster(tmp_path):
    cluster = docs("raycluster.yaml")["RayCluster"]
    manifests = docs("cronjob.yaml")
    cron, config = manifests["CronJob"], manifests["ConfigMap"]
    assert cron["apiVersion"] == "batch/v1" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    (argv,) = commands(shlex.join(container["command"]))
    assert argv[1] == "schedule" and "--once" in argv
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"]
    (key,) = config["data"]
    assert argv[2] == f"{mounts['config']}/{key}"
    assert mounts["data"] == "/data" and volumes["data"]["persistentVolumeClaim"]["claimName"] == "landslide-data"
    secret = next(e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]
    assert secret == {"name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}

    path = tmp_path / key
    path.write_text(config["data"][key])
    schedule = load_schedule(path)  # a valid schedule, job template included
    assert schedule.config.submit.address == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert str(schedule.config.output.root).startswith("/data/") and schedule.config.catalog.startswith("/data/")
