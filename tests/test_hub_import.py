"""``import-model --hub REPO_ID``: the study's checkpoints from a Hugging Face model repository
through ``huggingface_hub``, against a loopback server speaking the hub's file protocol
(``/{repo}/resolve/{revision}/{path}``, ``X-Repo-Commit``, ``ETag``, ``X-Error-Code``), named by
``HF_ENDPOINT``. Nothing leaves the machine."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_study_import import _reference

from landslide_batch.cli import main
from landslide_batch.models.card import load_model_folder, read_card
from landslide_batch.models.study import STUDY_MODELS

REPO = "harshinde/Sims"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def fake_hub(root: Path) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Serve ``root/<owner>/<name>/<path>`` as the hub serves a repository's files at ``main``;
    -> (endpoint, the requests as (method, path))."""
    requests: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _answer(self, body: bool) -> None:
            requests.append((self.command, self.path))
            owner, name, verb, revision, *rest = self.path.split("?")[0].lstrip("/").split("/") + ["", "", ""]
            repo = root / owner / name
            target = repo / "/".join(p for p in rest if p)
            if verb != "resolve" or not repo.is_dir() or revision != "main":
                code = "RepoNotFound" if not repo.is_dir() else "RevisionNotFound"
                return self._error(code)
            if not target.is_file():
                return self._error("EntryNotFound")
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _error(self, code: str) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory) -> Path:
    """The study's repository layout with one checkpoint: ``harshinde/Sims/models/resnet34.pth``."""
    root = tmp_path_factory.mktemp("hub")
    lightning, _ = _reference("resnet34", 0)
    folder = root / REPO / "models"
    folder.mkdir(parents=True)
    torch.save(lightning.state_dict(), folder / STUDY_MODELS["resnet34"].file)
    return root


def test_import_from_the_hub_equals_a_local_import_and_uses_the_cache(hub_root, tmp_path, monkeypatch, capsys):
    checkpoint = hub_root / REPO / "models" / STUDY_MODELS["resnet34"].file
    with fake_hub(hub_root) as (endpoint, requests):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        cache = tmp_path / "cache"
        args = ["import-model", "resnet34", "--hub", REPO, "--out", str(tmp_path / "m"), "--cache", str(cache)]
        assert main(args) == 0, capsys.readouterr().err
        url = f"{endpoint}/{REPO}/resolve/main/models/resnet34.pth"
        assert url in capsys.readouterr().out
        source = read_card(tmp_path / "m").source
        assert source["url"] == url and source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert ("GET", f"/{REPO}/resolve/main/models/resnet34.pth") in requests

        assert main(["import-model", "resnet34", str(checkpoint), "--out", str(tmp_path / "local")]) == 0
        hub_model, _ = load_model_folder(tmp_path / "m")
        local_model, _ = load_model_folder(tmp_path / "local")
        for (k, a), (_, b) in zip(hub_model.state_dict().items(), local_model.state_dict().items(), strict=True):
            assert torch.equal(a, b), k

        before = len([r for r in requests if r[0] == "GET"])
        assert main([*args[:-3], str(tmp_path / "again"), "--cache", str(cache)]) == 0
        assert len([r for r in requests if r[0] == "GET"]) == before, "the second import reads the cache"

        for argv, message in (
            (["import-model", "resnet34", "--hub", "someone/else"], "no such repository or revision"),
            (["import-model", "deeplabv3", "--hub", REPO], "the repository has no file 'models/deeplabv3"),
            (["import-model", "resnet34", "--hub", REPO, "--revision", "v9"], "no such repository or revision"),
            (["import-model", "resnet34", "--hub", REPO, "--sha256", "0" * 64], "does not match the expected"),
            (["import-model", "resnet34", str(checkpoint), "--hub", REPO], "give no CHECKPOINT or --base-url"),
        ):
            out = tmp_path / "bad"
            assert main([*argv, "--out", str(out), "--cache", str(cache)]) == 2
            err = capsys.readouterr().err
            assert err.startswith("landslide-batch import-model: error: ") and message in err, err
            assert not out.exists()


def test_an_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with fake_hub(tmp_path) as (endpoint, _):
        pass  # the port is closed again: nothing answers there
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    argv = ["import-model", "resnet34", "--hub", REPO, "--out", str(tmp_path / "m"), "--cache", str(tmp_path / "c")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("landslide-batch import-model: error: ") and endpoint in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
