"""ray-cluster.yaml, the container image and the KubeRay / Kubernetes manifests agree with each
other and with the project: one image tag, one Ray version, valid `landslide-batch` commands.
They also pass their owners' checks: Ray's own launcher validation, the fields of the minimum
KubeRay version's CRDs, and the shell KubeRay's submitter runs the RayJob's entrypoint in."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import tomllib
import yaml

from landslide_batch.cli import build_parser
from landslide_batch.jobs.schedule import load_schedule

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
#: The manifests for a cluster without a shared disk (cluster/object-storage/).
NO_SHARED_DISK = ("object-storage/raycluster.yaml", "object-storage/cronjob.yaml")


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
    """`a && b` (or `bash -c 'a && b'`) -> [argv of a, argv of b]; each must parse as a
    landslide-batch command."""
    argv = shlex.split(line)
    if argv[:2] == ["bash", "-c"] and len(argv) == 3:
        line = argv[2]
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
    for name in ("raycluster.yaml", "rayjob.yaml", "cronjob.yaml", *NO_SHARED_DISK):
        found |= set(images(list(docs(name).values())))
    assert found == {image}
    assert f"-t {image} ." in (CLUSTER / "README.md").read_text()
    assert f"-t {image} ." in (CLUSTER / "Dockerfile").read_text()


def test_image_pins_ray_and_installs_through_the_lock(ray_version):
    """The image's Ray is the clients'; what it installs is resolved against the lock in test_lock.py."""
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert ray_version == ray.__version__  # clients (this venv) and cluster run the same Ray
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu", dockerfile, re.M)
    installs = re.findall(r"pip install (.*?)(?:&&|$)", dockerfile.replace("\\\n", " "), re.M)
    assert any('"ray[data,train,default]==${RAY_VERSION}"' in i for i in installs)
    assert installs[-1].split()[-1] == "."
    for needed in ("requirements.lock", "pyproject.toml", "README.md", "landslide_batch", "training"):
        assert re.search(rf"^COPY .*{re.escape(needed)}", dockerfile, re.M), needed


def test_launcher_config(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != launcher["head_node_type"] and t["resources"].get("GPU")]
    assert gpu and all(t["max_workers"] > t["min_workers"] for t in gpu)  # autoscaling
    assert launcher["max_workers"] >= max(t["max_workers"] for t in gpu)
    project = next(k for k, v in launcher["file_mounts"].items() if v == ".")
    install = next(c for c in launcher["setup_commands"] if "pip install" in c)
    assert f"-c {project}/requirements.lock" in install and install.split()[-1] == project
    assert any("ray start --head" in c and "--dashboard-port=8265" in c for c in launcher["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in launcher["worker_start_ray_commands"])


def test_raycluster(ray_version):
    manifests = docs("raycluster.yaml")
    cluster, pvc = manifests["RayCluster"], manifests["PersistentVolumeClaim"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == ray_version
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:  # every node sees the shared volume at the same path, writable by the image's user
        assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}]
        assert pod["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
        assert pod["securityContext"] == IMAGE_USER
    gpu = [
        g
        for g in spec["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    ]
    assert gpu and all(g["maxReplicas"] > g["minReplicas"] for g in gpu)


def test_rayjob_runs_a_region_job_on_the_cluster():
    cluster = docs("raycluster.yaml")["RayCluster"]
    job = docs("rayjob.yaml")["RayJob"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    run, *rest = commands(job["spec"]["entrypoint"])
    assert run[:2] == ["landslide-batch", "run"] and run[run.index("--executor") + 1] == "ray"
    assert run[run.index("--device") + 1] == "cuda"  # GPUs asked for before the autoscaler adds a GPU node
    # Actors follow the work, up to as many GPU nodes as the cluster may grow to (one GPU each).
    assert run[run.index("--num-actors") + 1] == "auto"
    assert int(run[run.index("--max-actors") + 1]) == gpu_group(cluster)["maxReplicas"]
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
    assert pod["securityContext"] == IMAGE_USER

    path = tmp_path / key
    path.write_text(config["data"][key])
    schedule = load_schedule(path)  # a valid schedule, job template included
    assert schedule.config.submit.address == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert str(schedule.config.output.root).startswith("/data/") and schedule.config.catalog.startswith("/data/")
    assert schedule.config.job["device"] == "cuda"
    assert schedule.config.job["ray"] == {"num_actors": "auto", "max_actors": gpu_group(cluster)["maxReplicas"]}


def gpu_group(cluster: dict) -> dict:
    """The RayCluster's one GPU worker group (one GPU per pod)."""
    (group,) = (
        g
        for g in cluster["spec"]["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    )
    assert int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 1
    return group


def test_the_shipped_job_configs_scale_their_actors_with_the_work(launcher):
    """The example job and schedule say ``num_actors: auto`` with a ceiling of the launcher's GPU
    workers, so an autoscaling cluster grows with the region (one GPU per actor and worker)."""
    from landslide_batch.config import load_job

    gpu_workers = launcher["available_node_types"]["gpu_worker"]
    assert gpu_workers["resources"] == {"GPU": 1}
    job = load_job(ROOT / "configs" / "job_example.yaml")
    schedule_job = yaml.safe_load((ROOT / "configs" / "schedule_example.yaml").read_text())["job"]
    for ray_settings in (job.ray.model_dump(), schedule_job["ray"]):
        assert ray_settings["num_actors"] == "auto"
        assert ray_settings["max_actors"] == gpu_workers["max_workers"]


# --- Checked by their owners' rules -------------------------------------------------------------------

IMAGE_USER = {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}  # rayproject/ray: user ray, group users
MIN_DRIVER = 580  # NVIDIA driver for CUDA 13.0, torch 2.13.0's build on PyPI
KUBERAY_MIN = "1.3.0"
# The fields of KubeRay 1.3.0's CRDs (ray-operator/apis/ray/v1: raycluster_types.go, rayjob_types.go)
# under the parts the manifests use; a Pod template (``template``, ``submitterPodTemplate``) is
# Kubernetes' own and not listed. ``True``: required there.
KUBERAY_FIELDS = {
    "RayCluster.spec": {
        "headGroupSpec": True,
        "workerGroupSpecs": False,
        "rayVersion": False,
        "enableInTreeAutoscaling": False,
        "autoscalerOptions": False,
        "headServiceAnnotations": False,
        "suspend": False,
        "managedBy": False,
        "gcsFaultToleranceOptions": False,
    },
    "headGroupSpec": {
        "serviceType": False,
        "headService": False,
        "enableIngress": False,
        "rayStartParams": True,
        "template": True,
    },
    "workerGroupSpecs[]": {
        "groupName": True,
        "replicas": False,
        "minReplicas": False,
        "maxReplicas": False,
        "numOfHosts": False,
        "rayStartParams": True,
        "template": True,
        "scaleStrategy": False,
        "suspend": False,
        "idleTimeoutSeconds": False,
    },
    "autoscalerOptions": {
        "resources": False,
        "image": False,
        "imagePullPolicy": False,
        "env": False,
        "envFrom": False,
        "volumeMounts": False,
        "securityContext": False,
        "idleTimeoutSeconds": False,
        "upscalingMode": False,
        "version": False,
    },
    "RayJob.spec": {
        "activeDeadlineSeconds": False,
        "backoffLimit": False,
        "rayClusterSpec": False,
        "submitterPodTemplate": False,
        "metadata": False,
        "clusterSelector": False,
        "submitterConfig": False,
        "managedBy": False,
        "entrypoint": False,
        "runtimeEnvYAML": False,
        "jobId": False,
        "submissionMode": False,
        "entrypointResources": False,
        "entrypointNumCpus": False,
        "entrypointNumGpus": False,
        "ttlSecondsAfterFinished": False,
        "shutdownAfterJobFinishes": False,
        "suspend": False,
    },
}


def kuberay_parts() -> list[tuple[str, dict]]:
    """(field list name, the manifest's mapping) for every KubeRay-owned part of the manifests."""
    parts = [("RayJob.spec", docs("rayjob.yaml")["RayJob"]["spec"])]
    for name in ("raycluster.yaml", NO_SHARED_DISK[0]):
        cluster = docs(name)["RayCluster"]["spec"]
        parts += [("RayCluster.spec", cluster), ("headGroupSpec", cluster["headGroupSpec"])]
        parts += [("workerGroupSpecs[]", group) for group in cluster.get("workerGroupSpecs", [])]
        if "autoscalerOptions" in cluster:
            parts.append(("autoscalerOptions", cluster["autoscalerOptions"]))
    return parts


def test_kuberay_manifests_use_only_fields_of_the_minimum_kuberay_version():
    for name, part in kuberay_parts():
        known = KUBERAY_FIELDS[name]
        assert not set(part) - set(known), f"{name}: {sorted(set(part) - set(known))} not in KubeRay {KUBERAY_MIN}"
        missing = [field for field, required in known.items() if required and field not in part]
        assert not missing, f"{name}: {missing} required by KubeRay {KUBERAY_MIN}"
    assert f"KubeRay >= {KUBERAY_MIN}" in (CLUSTER / "raycluster.yaml").read_text()


def test_field_list_catches_a_field_of_a_later_kuberay():
    cluster = docs("raycluster.yaml")["RayCluster"]["spec"]
    later = {**cluster, "authOptions": {"mode": "token"}}  # KubeRay >= 1.6 only
    assert set(later) - set(KUBERAY_FIELDS["RayCluster.spec"]) == {"authOptions"}


def kuberay_submitter_script(
    entrypoint: str,
    address: str = "http://landslide-batch-head-svc:8265",
    job_id: str = "landslide-region-melamchi-abc12",
) -> str:
    """The script KubeRay's submitter Job runs as ``/bin/bash -ce -- SCRIPT`` (K8sJobMode, KubeRay
    1.3: ray-operator/controllers/ray/common/job.go ``GetK8sJobCommand``, words joined by spaces):
    the entrypoint is pasted in as it is, unquoted, after ``--``."""
    words = [
        "if",
        "!",
        "ray",
        "job",
        "status",
        "--address",
        address,
        job_id,
        ">/dev/null",
        "2>&1",
        ";",
        "then",
        "ray",
        "job",
        "submit",
        "--address",
        address,
        "--no-wait",
        "--submission-id",
        job_id,
        "--",
        entrypoint.strip(),
        ";",
        "fi",
        ";",
        "ray",
        "job",
        "logs",
        "--address",
        address,
        "--follow",
        job_id,
    ]
    return " ".join(words)


def run_submitter(tmp_path: Path, entrypoint: str) -> tuple[list[list[str]], list[list[str]]]:
    """Run the submitter's script with stubs on PATH -> (argvs ``ray`` got, argvs ``landslide-batch`` got)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, extra in (("ray", 'if [ "$2" = status ]; then exit 1; fi\n'), ("landslide-batch", "")):
        stub = stubs / name
        stub.write_text(
            f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> "{tmp_path}/{name}.log"\n'
            f'printf "\\n" >> "{tmp_path}/{name}.log"\n{extra}'
        )
        stub.chmod(0o755)
    done = subprocess.run(
        ["/bin/bash", "-ce", "--", kuberay_submitter_script(entrypoint)],
        env={"PATH": str(stubs)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr

    def calls(name: str) -> list[list[str]]:
        log = tmp_path / f"{name}.log"
        lines = log.read_text().split("\n")[:-1] if log.exists() else []
        return [line.split("\0")[:-1] for line in lines]

    return calls("ray"), calls("landslide-batch")


def submitted_entrypoint(ray_calls: list[list[str]]) -> str:
    """The entrypoint Ray receives from ``ray job submit ... -- ARGS``: Ray's job CLI joins ARGS with
    ``shlex.join`` (on Linux)."""
    (submit,) = [argv for argv in ray_calls if argv[:2] == ["job", "submit"]]
    return shlex.join(submit[submit.index("--") + 1 :])


def test_rayjob_entrypoint_reaches_ray_whole_through_kuberays_submitter_shell(tmp_path):
    entrypoint = docs("rayjob.yaml")["RayJob"]["spec"]["entrypoint"]
    ray_calls, ran_here = run_submitter(tmp_path, entrypoint)
    assert ran_here == []  # nothing of the job ran in the submitter pod
    assert [argv[:2] for argv in ray_calls] == [["job", "status"], ["job", "submit"], ["job", "logs"]]
    received = submitted_entrypoint(ray_calls)
    assert shlex.split(received) == shlex.split(entrypoint)  # one command, unchanged
    run, stac = commands(received)
    assert run[1] == "run" and stac[1] == "stac-item"


def test_an_entrypoint_with_a_bare_and_would_run_in_the_submitter_pod(tmp_path):
    """The check above can fail: a bare ``a && b`` entrypoint splits in KubeRay's shell."""
    ray_calls, ran_here = run_submitter(tmp_path, "landslide-batch run job.yaml && landslide-batch stac-item /data/out")
    assert ran_here == [["stac-item", "/data/out"]]
    assert submitted_entrypoint(ray_calls) == "landslide-batch run job.yaml"


def launcher_config_checked_by_ray(config: dict) -> dict:
    """``ray up``'s own checks, offline: the launcher's defaults and ``validate_config`` (the
    ``ray-schema.json`` shipped in the ray wheel, and the rules beyond the schema)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_rays_own_validation(launcher):
    import jsonschema
    import ray.autoscaler

    prepared = launcher_config_checked_by_ray(launcher)
    schema = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(launcher, json.loads(schema.read_text()))  # as written, too
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == launcher["max_workers"]
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_worker"]["resource"] = {"GPU": 1}  # a typo Ray must refuse
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        launcher_config_checked_by_ray(bad)


def test_launcher_vms_get_a_cuda13_driver_and_share_no_disk(launcher):
    amis = {t["node_config"]["ImageId"] for t in launcher["available_node_types"].values()}
    # AWS's public parameter for its current Ubuntu 24.04 base GPU AMI (driver >= 580), resolved at launch.
    assert amis == {
        "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
    }
    assert not any(option.startswith("-v") for option in launcher["docker"].get("run_options", []))
    assert "Object storage and clusters without a shared disk" in (ROOT / "ray-cluster.yaml").read_text()


def test_image_torch_build_driver_and_kuberay_versions_are_stated_where_users_look():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    cuda = re.search(r"^ARG TORCH_CUDA=(\S+)$", dockerfile, re.M).group(1)
    assert 'ENV NVIDIA_REQUIRE_CUDA="cuda>=${TORCH_CUDA}"' in dockerfile
    assert "assert torch.version.cuda == '${TORCH_CUDA}'" in dockerfile
    for readme in (ROOT / "README.md", CLUSTER / "README.md"):
        text = readme.read_text()
        for needed in (
            f"CUDA {cuda}",
            f"driver ≥ {MIN_DRIVER}",
            f"KubeRay ≥ {KUBERAY_MIN}",
            "Object storage and clusters without a shared disk",
        ):
            assert needed in text, f"{readme.name} does not state {needed!r}"


def test_the_head_may_launch_workers_with_their_profile_from_the_ssm_ami(launcher):
    """ray up's GPU workers can launch: the head's policy passes the workers' role and reads the
    AMI's SSM parameter, and the script that creates both profiles names the ones the file uses."""
    iam = CLUSTER / "iam"
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]["node_config"]
    workers = [t["node_config"] for name, t in types.items() if name != launcher["head_node_type"]]
    statements = json.loads((iam / "head-policy.json").read_text())["Statement"]

    def granted(action: str) -> list[str]:
        return [
            s["Resource"]
            for s in statements
            if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        ]

    for worker in workers:
        role = worker["IamInstanceProfile"]["Name"]
        assert granted("iam:PassRole") == [f"arn:aws:iam::ACCOUNT_ID:role/{role}"]
        parameter = worker["ImageId"].removeprefix("resolve:ssm:")
        (resource,) = granted("ssm:GetParameters")
        assert worker["ImageId"].startswith("resolve:ssm:") and parameter.startswith(
            resource.split(":parameter", 1)[1].rstrip("*")
        )
    assert granted("ec2:RunInstances") and granted("s3:PutObject")
    script = (iam / "create-profiles.sh").read_text()
    names = re.search(r"^for name in (.*); do$", script, re.M).group(1).split()
    assert sorted(names) == sorted(
        {head["IamInstanceProfile"]["Name"], *(w["IamInstanceProfile"]["Name"] for w in workers)}
    )
    subprocess.run(["bash", "-n", str(iam / "create-profiles.sh")], check=True)


# --- Deployable as written: placeholders in one place, pods that can write, requests that fit -----

sys.path.insert(0, str(CLUSTER))
import fill  # noqa: E402  (cluster/fill.py)

#: Allocatable CPU and GiB of the node types the worker pods are sized for (arithmetic in
#: raycluster.yaml), and what their daemon sets take (GPU device plugin, logging, CNI).
NODE_TYPES = {"GKE g2-standard-8": (7.91, 28.3), "EKS g5.2xlarge": (7.91, 30.4)}
DAEMON_SETS = (0.5, 1.5)
OBJECT_STORAGE_SECRET = {"secretRef": {"name": "landslide-batch-object-storage", "optional": True}}


def test_every_placeholder_is_listed_in_one_place_and_filled_by_one_command(tmp_path):
    known = fill.placeholders()
    seen = set()
    for path in fill.manifests():
        marks = dict(fill.marked_lines(path))
        for number, line in enumerate(path.read_text().splitlines(), 1):
            holds = {key for key, value in known.items() if value in line.split("#")[0]}
            if number in marks:
                assert marks[number] in known and marks[number] in holds, f"{path.name}:{number}"
                seen.add(marks[number])
            else:  # a placeholder value on an unmarked line would survive fill.py
                assert not holds, f"{path.name}:{number} holds {holds} without a PLACEHOLDER mark"
    assert seen == set(known)
    values = {key: f"filled-{key}" for key in known}
    assert fill.main([str(tmp_path), *(f"{k}={v}" for k, v in values.items())]) == 0
    for path in fill.manifests():
        text = fill.target(tmp_path, path).read_text()
        assert not any(value in text for value in known.values()), path.name
        list(yaml.safe_load_all(text))  # still YAML
    assert fill.main([str(tmp_path / "bad"), "image=x", "bukcet=y"]) == 2  # an unknown key
    assert not (tmp_path / "bad").exists()


def test_fill_writes_the_manifests_of_one_deployment_whole_and_names_the_others(tmp_path, capsys):
    """Without a shared disk no storage class is given: the manifests holding it are left out,
    named, rather than written with the placeholder left in."""
    assert fill.main([str(tmp_path), "image=registry.example.com/lb:1", "bucket=maps"]) == 0
    assert (tmp_path / "object-storage" / "raycluster.yaml").exists() and not (tmp_path / "raycluster.yaml").exists()
    assert "cluster/raycluster.yaml (needs storage_class)" in capsys.readouterr().err
    text = (tmp_path / "object-storage" / "cronjob.yaml").read_text()
    assert "s3://maps/events/" in text and "your-bucket" not in text and "your-org" not in text


def test_worker_requests_fit_the_documented_node_types():
    text = (CLUSTER / "raycluster.yaml").read_text()
    groups = docs("raycluster.yaml")["RayCluster"]["spec"]["workerGroupSpecs"]
    for group in groups:
        requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        cpu, memory = float(requests["cpu"]), float(requests["memory"].removesuffix("Gi"))
        for node, (node_cpu, node_gib) in NODE_TYPES.items():
            assert node.split()[1] in text, f"raycluster.yaml does not show the arithmetic for {node}"
            assert cpu + DAEMON_SETS[0] <= node_cpu and memory + DAEMON_SETS[1] <= node_gib, node


def test_pods_can_write_a_root_owned_volume_and_take_credentials_from_one_secret():
    spec = docs("raycluster.yaml")["RayCluster"]["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    (init,) = head["initContainers"]
    uid, gid = IMAGE_USER["runAsUser"], IMAGE_USER["runAsGroup"]
    assert init["securityContext"]["runAsUser"] == 0 and f"chown {uid}:{gid} /data" in " ".join(init["command"])
    assert init["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    pods = []
    for raycluster, cronjob in (("raycluster.yaml", "cronjob.yaml"), NO_SHARED_DISK):
        pods += ray_pods(docs(raycluster)["RayCluster"]["spec"])
        pods.append(docs(cronjob)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    for pod in pods:
        assert pod["containers"][0]["envFrom"] == [OBJECT_STORAGE_SECRET]


# --- A cluster without a shared disk: cluster/object-storage/ ------------------------------------


def ray_pods(spec: dict) -> list[dict]:
    """The pod specs of a RayCluster's ``spec``: the head's, then each worker group's."""
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def without_shared_volume(manifests: dict[str, dict]) -> dict[str, dict]:
    """``manifests`` less the shared disk: no PersistentVolumeClaim, and no pod volume, volume
    mount or init step for it."""
    out = {kind: copy.deepcopy(doc) for kind, doc in manifests.items() if kind != "PersistentVolumeClaim"}

    def strip(pod: dict) -> None:
        pod.pop("initContainers", None)
        if volumes := [v for v in pod.pop("volumes", []) if "persistentVolumeClaim" not in v]:
            pod["volumes"] = volumes
        for container in pod["containers"]:
            if mounts := [m for m in container.pop("volumeMounts", []) if m["name"] != "data"]:
                container["volumeMounts"] = mounts

    if "RayCluster" in out:
        for pod in ray_pods(out["RayCluster"]["spec"]):
            strip(pod)
    if "CronJob" in out:
        strip(out["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        out.pop("ConfigMap")  # its schedule differs: checked on its own
    return out


def test_the_object_storage_raycluster_is_the_shared_one_without_its_volume():
    """Same head, GPU group, requests, autoscaling and credentials as raycluster.yaml (so its
    KubeRay fields and node fit hold here too), and no claim a cluster without a ReadWriteMany
    storage class could not bind."""
    manifests = docs(NO_SHARED_DISK[0])
    assert list(manifests) == ["RayCluster"]
    assert manifests == without_shared_volume(docs("raycluster.yaml"))
    text = (CLUSTER / NO_SHARED_DISK[0]).read_text()
    assert "volume" not in yaml.safe_dump(manifests) and "/data" not in yaml.safe_dump(manifests)
    assert all(node.split()[1] in text for node in NODE_TYPES)


def test_the_object_storage_scheduler_keeps_everything_on_the_store(tmp_path):
    cluster = docs(NO_SHARED_DISK[0])["RayCluster"]
    manifests = docs(NO_SHARED_DISK[1])
    assert without_shared_volume(manifests) == without_shared_volume(docs("cronjob.yaml"))
    assert {k: v for k, v in manifests.items() if k != "ConfigMap"} == without_shared_volume(manifests)
    pod = manifests["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "config", "configMap": {"name": manifests["ConfigMap"]["metadata"]["name"]}}]
    (key,) = manifests["ConfigMap"]["data"]
    path = tmp_path / key
    path.write_text(manifests["ConfigMap"]["data"][key])
    schedule = load_schedule(path)  # valid: every input a URI, so neither shared_fs nor upload_to
    cfg = schedule.config
    assert str(cfg.output.root).startswith("s3://") and cfg.catalog.startswith("s3://")
    assert cfg.job["ensemble"].startswith("s3://")
    assert not cfg.submit.shared_fs and cfg.submit.upload_to is None
    assert cfg.submit.address == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert cfg.job["device"] == "cuda"
    assert cfg.job["ray"] == {"num_actors": "auto", "max_actors": gpu_group(cluster)["maxReplicas"]}


def readme_steps() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### A cluster without a shared disk, step by step")
    return text[start : text.index("\n## ", start)]


def test_the_readme_steps_run_as_written(tmp_path, monkeypatch):
    """README, "A cluster without a shared disk, step by step": its landslide-batch commands
    parse, its fill.py command writes the manifests it then applies, its job YAML is a valid job."""
    steps = readme_steps()
    blocks = re.findall(r"```(\w+)\n(.*?)```", steps, re.S)
    lines = [
        " ".join(part.strip() for part in line.split("\\\n")).split("  #")[0]
        for lang, body in blocks
        if lang == "bash"
        for line in re.split(r"(?<!\\)\n", body.strip())
    ]
    ours = [shlex.split(line) for line in lines if line.startswith("landslide-batch ")]
    assert {argv[1] for argv in ours} == {"submit", "status", "logs", "vectorize"}
    for argv in ours:
        build_parser().parse_args(argv[1:])
    (fill_line,) = [line for line in lines if line.startswith("python cluster/fill.py")]
    monkeypatch.chdir(tmp_path)
    assert fill.main(shlex.split(fill_line)[2:]) == 0
    applied = [shlex.split(line)[-1] for line in lines if line.startswith("kubectl apply -f")]
    assert applied == ["deploy/object-storage/raycluster.yaml", "deploy/object-storage/cronjob.yaml"]
    for path in applied:
        assert "your-bucket" not in (tmp_path / path).read_text() and "your-org" not in (tmp_path / path).read_text()
    (job_yaml,) = [body for lang, body in blocks if lang == "yaml"]
    (tmp_path / "region.yaml").write_text(job_yaml)
    (tmp_path / "event.geojson").write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[85, 28], [86, 28], [86, 29], [85, 28]]]})
    )
    from landslide_batch.config import load_job

    job = load_job(tmp_path / "region.yaml")
    assert str(job.out).startswith("s3://") and job.device == "cuda" and len(job.scenes) == 2
