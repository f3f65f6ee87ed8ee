"""``landslide-batch app``: start the Streamlit web app (``streamlit run`` on the page script)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from ..app import BASEMAP_ENV, MAX_UPLOAD_ENV, MAX_UPLOAD_MB, MODELS_ENV, PAGE, RUNS_ENV
from ..errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "app",
        help="start the web app: try models on a patch, browse region runs",
        description="Start the Streamlit app. Options other than these go to `streamlit run`, "
        "e.g. --server.port 8600 --server.headless true.",
        allow_abbrev=False,  # a streamlit option must never be taken for an abbreviation of ours
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"folder of model folders (card.json + weights.pt); default ${MODELS_ENV} or ./models",
    )
    p.add_argument(
        "--runs-dir", type=Path, default=None, help=f"folder of region job outputs (run.json); default ${RUNS_ENV} or ."
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=MAX_UPLOAD_MB,
        help=f"largest upload accepted, in MB (Streamlit's server.maxUploadSize too); default {MAX_UPLOAD_MB}",
    )
    p.add_argument(
        "--basemap",
        default=None,
        metavar="STYLE_URL",
        help="MapLibre style URL for the run map's basemap (needs network); default: no basemap",
    )
    p.set_defaults(func=_app, accepts_extra=True)


def streamlit_command(args) -> tuple[list[str], dict[str, str]]:
    """-> (argv, environment) for the Streamlit server. Folders travel as environment variables
    because the page also runs under ``AppTest``, where there is no command line to parse."""
    env = dict(os.environ)
    for folder, var, flag in ((args.models_dir, MODELS_ENV, "--models-dir"), (args.runs_dir, RUNS_ENV, "--runs-dir")):
        if folder is None:
            continue
        if not folder.is_dir():
            raise ConfigError(f"{flag} {folder}: no such folder")
        env[var] = str(folder.resolve())
    if args.max_upload_mb < 1:
        raise ConfigError(f"--max-upload-mb: expected a whole number of MB >= 1, found {args.max_upload_mb}")
    if any(a.startswith("--server.maxUploadSize") for a in args.extra):
        raise ConfigError("--server.maxUploadSize: use --max-upload-mb, which caps the page's own check too")
    env[MAX_UPLOAD_ENV] = str(args.max_upload_mb)
    if args.basemap:
        env[BASEMAP_ENV] = args.basemap
    else:
        env.pop(BASEMAP_ENV, None)
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.maxUploadSize",
        str(args.max_upload_mb),
        *args.extra,
    ], env


def _app(args) -> NoReturn:
    argv, env = streamlit_command(args)
    sys.stdout.flush()
    # Replace this process: signals (Ctrl-C, a test's terminate) reach the server directly.
    os.execve(sys.executable, argv, env)
