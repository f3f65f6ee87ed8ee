"""``landslide-batch app``: start the Streamlit web app (``streamlit run`` on the page script)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from ..app import MODELS_ENV, PAGE, RUNS_ENV
from ..errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "app", help="start the web app: try models on a patch, browse region runs",
        description="Start the Streamlit app. Options other than these go to `streamlit run`, "
                    "e.g. --server.port 8600 --server.headless true.",
        allow_abbrev=False,  # a streamlit option must never be taken for an abbreviation of ours
    )
    p.add_argument("--models-dir", type=Path, default=None,
                   help=f"folder of model folders (card.json + weights.pt); default ${MODELS_ENV} or ./models")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help=f"folder of region job outputs (run.json); default ${RUNS_ENV} or .")
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
    return [sys.executable, "-m", "streamlit", "run", str(PAGE), *args.extra], env


def _app(args) -> NoReturn:
    argv, env = streamlit_command(args)
    sys.stdout.flush()
    # Replace this process: signals (Ctrl-C, a test's terminate) reach the server directly.
    os.execve(sys.executable, argv, env)
