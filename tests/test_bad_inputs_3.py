"""Bad inputs, round three (docs/reliability.md): paths read from files that reach outside their
folder (a ``run.json`` naming ``/home/me`` or ``../victim.gpkg``, a symlinked run folder, a sources
file's ``../`` archive), ``out`` a system folder, and the traceback, hang and exit-code cases.

Each containment case keeps a victim outside the folder and checks it afterwards: same bytes, not
moved, not removed. Every CLI case runs the real ``landslide_batch.cli.main`` and checks the exit
code and the one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landslide_batch.cli import main
from landslide_batch.synthetic import synthetic_scene, write_geotiff

PROBE = ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"]
needs_namespaces = pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(PROBE, capture_output=True, check=False).returncode != 0,
    reason="no private mount namespace with mounts (unshare -m, root) here",
)


def cli(capsys, *args) -> tuple[int, str]:
    code = main([*map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err


def digest(path: Path) -> str:
    """sha256 of a file, or of every file under a folder (names and bytes)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(p.relative_to(path).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """A finished tiny job (64 x 64 px): its scene, model and output folder (copy before changing)."""
    tmp = tmp_path_factory.mktemp("finished")
    scene = write_geotiff(tmp / "scene.tif", synthetic_scene(64, 64, seed=5)[0])
    out = tmp / "out"
    assert main(["run", "--scene", str(scene), "--model", str(tiny_model), "--out", str(out), "--block", "64"]) == 0
    return {"scene": scene, "model": tiny_model, "out": out}


def job_copy(finished: dict[str, Path], tmp: Path) -> Path:
    out = tmp / "job" / "out"
    shutil.copytree(finished["out"], out)
    return out


def edit_outputs(out: Path, **names: str) -> None:
    run = json.loads((out / "run.json").read_text())
    run["outputs"].update(names)
    (out / "run.json").write_text(json.dumps(run))


def victim_folder(tmp: Path) -> Path:
    victim = tmp / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "notes.txt").write_text("keep me")
    (victim / "id_rsa").write_bytes(b"secret-like bytes")
    return victim


# --- 1. data loss: products named by a manifest ---------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_overwrite_never_removes_a_folder_run_json_names_outside_out(tmp_path, capsys, finished, how):
    out = job_copy(finished, tmp_path)
    victim = victim_folder(tmp_path)
    before = digest(victim)
    edit_outputs(out, polygons=str(victim) if how == "absolute" else "../../victim")
    manifest_before = (out / "run.json").read_bytes()
    code, err = cli(
        capsys, "run", "--scene", finished["scene"], "--model", finished["model"], "--out", out,
        "--block", 64, "--threshold", 0.3, "--overwrite",
    )  # fmt: skip
    assert code == 2, err
    assert "outputs.polygons" in err and "lies outside" in err and "Traceback" not in err
    assert digest(victim) == before
    assert (out / "run.json").read_bytes() == manifest_before  # refused before anything was touched


def test_vectorize_never_replaces_a_file_run_json_names_outside_out(tmp_path, capsys, finished):
    out = job_copy(finished, tmp_path)
    victim = tmp_path / "job" / "victim.gpkg"
    victim.write_bytes(b"someone else's polygons")
    edit_outputs(out, polygons="../victim.gpkg")
    mask = digest(out / "mask.tif")
    code, err = cli(capsys, "vectorize", out, "--threshold", 0.2)
    assert code == 2, err
    assert "'../victim.gpkg' lies outside" in err
    assert victim.read_bytes() == b"someone else's polygons"
    assert digest(out / "mask.tif") == mask
    assert not (out / ".vectorize").exists()


def test_vectorize_refuses_a_product_symlinked_outside_out(tmp_path, capsys, finished):
    out = job_copy(finished, tmp_path)
    victim = tmp_path / "elsewhere.tif"
    victim.write_bytes(b"not a mask")
    (out / "mask.tif").unlink()
    (out / "mask.tif").symlink_to(victim)
    code, err = cli(capsys, "vectorize", out, "--threshold", 0.2)
    assert code == 2, err
    assert "outputs.mask" in err and "lies outside" in err
    assert victim.read_bytes() == b"not a mask" and (out / "mask.tif").is_symlink()


def test_contained_refuses_what_leaves_the_prefix_on_object_storage():
    from landslide_batch.errors import InputError
    from landslide_batch.storage.contained import contained

    assert str(contained("s3://bucket/job", "sub/../mask.tif", "x")) == "s3://bucket/job/mask.tif"
    for bad in ["../other/mask.tif", "/abs.tif", "a/../../b", "s3://bucket/else", ".", "", 7, None]:
        with pytest.raises(InputError, match="outside|expected a file name"):
            contained("s3://bucket/job", bad, "run.json outputs.mask")


# --- 2. exposure: the app's folders, `out`, a sources file ----------------------------------------------


def test_app_offers_no_run_folder_or_manifest_symlinked_out_of_the_runs_folder(tmp_path, finished):
    from landslide_batch.app.run_folders import find_runs, read_run, run_files

    runs = tmp_path / "runs"
    shutil.copytree(finished["out"], runs / "real")
    outside = tmp_path / "outside"
    shutil.copytree(finished["out"], outside / "stolen")
    (outside / "stolen" / "credentials").write_text("aws_secret_access_key=...")
    edit_outputs(outside / "stolen", secret="credentials")
    (runs / "linked").symlink_to(outside / "stolen")  # a symlinked run folder
    (runs / "manifest_only").mkdir()
    (runs / "manifest_only" / "run.json").symlink_to(outside / "stolen" / "run.json")  # a symlinked run.json
    found = find_runs(runs)
    assert found == [runs / "real"]
    served = [f.path.resolve() for part in run_files(found[0], read_run(found[0])) for f in part]
    assert served and all(p.is_relative_to(runs.resolve()) for p in served)


def test_app_offers_no_model_folder_symlinked_out_of_the_models_folder(tmp_path, tiny_model):
    from landslide_batch.app.model_folders import find_models

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "kept")
    (models / "linked").symlink_to(tiny_model)
    (models / "weights_linked").mkdir()
    shutil.copy(tiny_model / "card.json", models / "weights_linked" / "card.json")
    (models / "weights_linked" / "weights.pt").symlink_to(tiny_model / "weights.pt")
    found, problems = find_models(models)
    assert [m.path for m in found] == [models / "kept"]
    assert sorted(problems) == [
        "linked: links outside the models folder; not offered",
        "weights_linked: links outside the models folder; not offered",
    ]


@pytest.mark.parametrize("where", ["/", "/etc", "/usr/lib/x", "home", "../../../../../../../../etc", "link"])
def test_out_in_a_system_or_home_folder_is_refused_before_anything_is_written(
    tmp_path, capsys, finished, monkeypatch, where
):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "link").symlink_to("/etc")
    out = {"home": str(home), "link": str(tmp_path / "link")}.get(where, where)
    job = tmp_path / "job.yaml"
    job.write_text(f"scene: {finished['scene']}\nout: {out}\nmodels: [{finished['model']}]\n")
    before = sorted(p.name for p in home.iterdir())
    code, err = cli(capsys, "run", job)
    assert code == 2, err
    assert "a system or shared folder" in err or "your home folder" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in home.iterdir()) == before


@pytest.mark.parametrize("name", ["../evil.zip", "/tmp/evil.zip", "sub/evil.zip", ".."])
def test_fetch_data_refuses_an_archive_name_that_leaves_out_before_any_download(tmp_path, capsys, name):
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "dataset: L4S\nbase_url: http://127.0.0.1:9/never\n"  # port 9 (discard): nothing is fetched
        f"files: [{{name: {json.dumps(name)}, split: train}}]\n"
    )
    code, err = cli(capsys, "fetch-data", "l4s", "--out", tmp_path / "data", "--sources", sources)
    assert code == 2, err
    assert "should be a plain file name" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "evil.zip").exists()


# --- 3. tracebacks -> one line and the documented exit code ---------------------------------------------

X0, Y0 = 500000.0, 3100000.0  # the synthetic scenes' upper-left corner, EPSG:32645 (10 m pixels)
METRES_RING = [
    [X0 + 100, Y0 - 500],
    [X0 + 500, Y0 - 500],
    [X0 + 500, Y0 - 100],
    [X0 + 100, Y0 - 100],
    [X0 + 100, Y0 - 500],
]


def region_yaml(tmp: Path, scene: Path, model: Path, aoi: Path, out: Path, extra: str = "") -> Path:
    job = tmp / "region.yaml"
    job.write_text(f"scenes: [{scene}]\naoi: {aoi}\nmodels: [{model}]\nout: {out}\nblock: 64\n{extra}")
    return job


def test_geojson_aoi_in_metres_without_a_crs_asks_for_one(tmp_path, capsys, finished):
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [METRES_RING]}))
    code, err = cli(capsys, "run", region_yaml(tmp_path, finished["scene"], finished["model"], aoi, tmp_path / "out"))
    assert code == 2, err
    assert re.search(
        r"aoi.geojson: coordinates x 500100\.\.500500, y 3\.0995e\+06\.\.3\.0999e\+06 are not longitude/latitude", err
    )
    assert "inputs.aoi_crs" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "run.json").exists()


def test_shapefile_aoi_without_prj_asks_for_a_crs_in_a_single_scene_job(tmp_path, capsys, finished):
    import geopandas as gpd
    from shapely.geometry import Polygon

    gpd.GeoDataFrame(geometry=[Polygon(METRES_RING)]).to_file(tmp_path / "aoi.shp")  # no CRS: no .prj
    assert not (tmp_path / "aoi.prj").exists()
    job = tmp_path / "job.yaml"
    job.write_text(
        f"scene: {finished['scene']}\nout: {tmp_path / 'out'}\nmodels: [{finished['model']}]\n"
        f"inputs: {{aoi: {tmp_path / 'aoi.shp'}}}\n"
    )
    code, err = cli(capsys, "run", job)
    assert code == 2, err
    assert "aoi.shp: coordinates x 500100..500500" in err and "a .prj beside a shapefile" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "run.json").exists()


@needs_namespaces
def test_region_job_that_cannot_fit_the_disk_exits_4_with_one_line(tmp_path, finished):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "crs": {"type": "name", "properties": {"name": "EPSG:32645"}},
                               "coordinates": [METRES_RING]}))  # fmt: skip
    job = region_yaml(tmp_path, finished["scene"], finished["model"], aoi, mnt / "out")
    script = f"{sys.executable} -m landslide_batch.cli run {job}; echo rc=$?"
    mount = f"mount -t tmpfs -o size=64k tmpfs {mnt}"
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mount} && {script}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert "rc=4" in text, text
    # Refused up front, from the grid's size, as a scene job is (a disk that fills later mid-job:
    # "the file system of OUT is full", also exit 4, through the same disk_full_is_clear).
    assert re.search(r"landslide-batch run: error: not enough free space for \S+/out: this \d+x\d+ px job", text), text
    assert "Traceback" not in text


@needs_namespaces
def test_vectorize_on_a_read_only_folder_is_one_line_and_exit_2(tmp_path, finished):
    out = job_copy(finished, tmp_path)
    before = digest(out)
    script = f"{sys.executable} -m landslide_batch.cli vectorize {out} --threshold 0.3; echo rc=$?"
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind {out} {out} && mount -o remount,ro,bind {out} && {script}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.stdout.strip() == "rc=2", text
    assert f"landslide-batch vectorize: error: {out}: cannot write in {out} (a read-only file system)" in text
    assert "Traceback" not in text and digest(out) == before


def test_an_overlap_that_leaves_a_1px_stride_is_refused_with_the_figure_before_ingest(tmp_path, capsys, finished):
    out = tmp_path / "out"
    code, err = cli(
        capsys, "run", "--scene", finished["scene"], "--model", finished["model"], "--out", out,
        "--overlap", 0.99, "--block", 64,
    )  # fmt: skip
    assert code == 2, err
    assert re.search(
        r"one block needs about [\d.]+ GB of memory for its tiles, above the limit of 17.2 GB: a larger stride "
        r"\(less --overlap; now 128 px tiles every 1 px, 1.64e\+04 passes per pixel\), or a smaller --block",
        err,
    ), err
    assert not (out / ".work").exists()  # nothing ingested


def test_limits_figures_match_the_tile_grid():
    from landslide_batch.errors import ConfigError
    from landslide_batch.plan.limits import block_bytes, block_tiles, check_work
    from landslide_batch.plan.tiling import TileGrid, plan_blocks

    grid = TileGrid(3000, 3000, 128, 64)
    interior = max(b.n_tiles for b in plan_blocks(grid, 1024))
    assert block_tiles(128, 64, 1024) == interior == 17 * 17
    assert block_bytes(128, 64, 1024, members=2) == 289 * 128 * 128 * 4 * (14 + 3 + 2)
    check_work(10980, 10980, tile=128, stride=64, block=1024)  # a Sentinel-2 tile at the defaults passes
    with pytest.raises(ConfigError, match=r"the plan needs 2.49e\+07 tiles, above the limit of 2e\+07"):
        check_work(20000, 20000, tile=128, stride=4, block=64)


def test_continent_sized_aoi_is_refused_at_once_with_the_figure(tmp_path, capsys, finished):
    import time

    aoi = tmp_path / "asia.geojson"
    ring = [[60, 5], [140, 5], [140, 55], [60, 55], [60, 5]]
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    t0 = time.perf_counter()
    code, err = cli(capsys, "run", region_yaml(tmp_path, finished["scene"], finished["model"], aoi, tmp_path / "out"))
    assert time.perf_counter() - t0 < 30
    assert code == 2, err
    assert re.search(r"the grid is \d+ x \d+ = [\d.]+e\+1[01] px, above max_pixels 4e\+09", err), err
    assert "--max-pixels" in err and not (tmp_path / "out" / ".work").exists()


# --- 4. hangs -> bounded --------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["closed", "silent"])
def test_dead_ray_head_fails_within_the_connect_timeout_in_one_line(tmp_path, capsys, finished, head):
    """A closed port (the head is gone) and a port that accepts and never answers (a hung head):
    one line, exit 2, within ``ray.connect_timeout_s`` (2 s here), and Ray is never started."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if head == "silent":
            listener.listen()
        where = f"127.0.0.1:{listener.getsockname()[1]}"
        if head == "closed":
            listener.close()
        job = tmp_path / "job.yaml"
        job.write_text(
            f"scene: {finished['scene']}\nout: {tmp_path / 'out'}\nmodels: [{finished['model']}]\nblock: 64\n"
            f"executor: ray\ndevice: cpu\nray: {{address: '{where}', connect_timeout_s: 2}}\n"
        )
        t0 = time.perf_counter()
        code, err = cli(capsys, "run", job)
        took = time.perf_counter() - t0
    assert code == 2, err
    why = "Connection refused" if head == "closed" else "no answer"
    assert f"error: cannot reach the Ray head at {where} ({why}; waited up to 2 s)" in err and err.count("\n") == 1
    assert took < 20 and not (tmp_path / "out" / "run.json").exists()


def test_ray_addresses_that_name_a_head():
    from landslide_batch.infer.ray_connect import head_endpoint

    assert head_endpoint("10.0.0.5:6379") == "10.0.0.5:6379"
    assert head_endpoint("ray://head.example:10001") == "head.example:10001"
    assert head_endpoint("[::1]:6379") == "[::1]:6379"
    assert head_endpoint("auto") is None and head_endpoint("local") is None


# --- 6. every command, three bad inputs: no traceback, exit code as documented ----------------------------

#: command -> (argv with {bad} for the input, whether the input is a folder); ``{tmp}``: a scratch folder.
COMMANDS: dict[str, tuple[list[str], bool]] = {
    "run": (["run", "{bad}"], False),
    "vectorize": (["vectorize", "{bad}"], True),
    "init-model": (["init-model", "--arch", "Unet", "--encoder", "mobilenet_v2", "--out", "{bad}"], True),
    "import-model": (["import-model", "resnet34", "{bad}", "--out", "{tmp}/models"], False),
    "app": (["app", "--runs-dir", "{bad}", "--models-dir", "{tmp}"], True),
    "submit": (["submit", "{bad}", "--address", "http://127.0.0.1:1"], False),
    "status": (["status", "{bad}", "--address", "http://127.0.0.1:1"], False),
    "logs": (["logs", "{bad}", "--address", "http://127.0.0.1:1"], False),
    "schedule": (["schedule", "{bad}", "--once", "--local"], False),
    "stac-item": (["stac-item", "{bad}"], True),
    "fetch-data": (["fetch-data", "l4s", "--out", "{tmp}/data", "--sources", "{bad}"], False),
    "compare": (["compare", "{bad}", "--inventory", "{bad}"], True),
    "train": (["train", "{bad}", "--out", "{tmp}/trained"], False),
    "evaluate": (["evaluate", "--data", "{bad}", "--model", "{tmp}/no-model"], True),
    "cut-patches": (["cut-patches", "{bad}", "{bad}", "--out", "{tmp}/patches"], False),
    "reproduce": (["reproduce", "--data", "{bad}", "--out", "{tmp}/repro", "--quick"], True),
    "demo": (["demo", "--out", "{bad}"], True),
    "completion": (["completion", "{bad}"], False),  # its input is a shell's name: a path is none
}
NO_INPUT = {"zoo"}  # takes none
#: Their input is only a folder to write in: an empty one is a good input (the demo then runs for
#: minutes), a folder holding anything is theirs to refuse or use; a file is the bad input.
WRITE_ONLY = {"demo"}
#: A runs folder without a readable run.json, or none at all, is a good input: the app starts (here:
#: would start) and its page says what it found.
ACCEPTED = {("app", "unreadable"), ("app", "empty")}


def bad_input(tmp: Path, kind: str, folder: bool) -> Path:
    """``unreadable``: cannot be read as what it is (a folder where a file is expected, a folder
    whose run.json is a folder); ``empty``: a 0-byte file or an empty folder; ``wrong-type``: a
    file of another kind (YAML that is a list, a file where a folder is expected)."""
    bad = tmp / "bad"
    if kind == "unreadable":
        (bad / "run.json").mkdir(parents=True) if folder else bad.mkdir()
    elif kind == "empty":
        bad.mkdir() if folder else bad.write_bytes(b"")
    else:
        bad.write_text("- 1\n- two\n")
    return bad


def test_every_command_is_in_the_sweep():
    from landslide_batch.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS) | NO_INPUT


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (c, k)
        for c in sorted(COMMANDS)
        for k in ("unreadable", "empty", "wrong-type")
        if c not in WRITE_ONLY or k == "wrong-type"
    ],
)
def test_every_command_answers_a_bad_input_in_one_line(tmp_path, capsys, monkeypatch, command, kind):
    import landslide_batch.commands.app as app

    monkeypatch.setattr(app.os, "execve", lambda *a: (_ for _ in ()).throw(SystemExit(0)))  # never start a server
    monkeypatch.chdir(tmp_path)
    template, folder = COMMANDS[command]
    bad = bad_input(tmp_path, kind, folder)
    argv = [a.format(bad=bad, tmp=tmp_path) for a in template]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage error (2), or the app's exec
        code = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if (command, kind) in ACCEPTED:
        assert code == 0, err
    else:  # exit 2 (bad input), one line naming the command; exit 1 would be a bug (docs/reliability.md)
        assert code == 2, err
        assert f"landslide-batch {command}: error: " in err, err


def test_region_job_out_in_a_system_folder_is_refused(tmp_path, capsys, finished):
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[84, 28], [84.1, 28], [84.1, 28.1], [84, 28]]]}))
    code, err = cli(capsys, "run", region_yaml(tmp_path, finished["scene"], finished["model"], aoi, Path("/usr/x")))
    assert code == 2, err
    assert "--out /usr/x is /usr/x, a system or shared folder" in err and not Path("/usr/x").exists()


@pytest.mark.parametrize("kind", ["scene", "region"])
def test_out_that_holds_the_models_is_refused_before_anything_is_written(tmp_path, capsys, finished, kind):
    """``--overwrite`` and the work folder must never reach what the job reads: an ``out`` that
    contains a model folder is refused, and the model is left as it was."""
    out = tmp_path / "maps"
    model = out / "models" / "unet"
    shutil.copytree(finished["model"], model)
    before = digest(model)
    if kind == "scene":
        code, err = cli(capsys, "run", "--scene", str(finished["scene"]), "--model", str(model), "--out", str(out))
    else:
        aoi = tmp_path / "aoi.geojson"
        aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[84, 28], [84.1, 28], [84.1, 28.1], [84, 28]]]}))
        code, err = cli(capsys, "run", region_yaml(tmp_path, finished["scene"], model, aoi, out))
    assert code == 2, err
    assert f"--out {out} contains the model {model}" in err
    assert sorted(p.name for p in out.iterdir()) == ["models"] and digest(model) == before
