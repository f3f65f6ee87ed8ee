"""``landslide-batch`` command line.

Each command lives in a module exposing ``register(subparsers)``; the module sets
``func`` on its parser. Commands of packages built on this one (``training``) arrive
through the ``landslide_batch.commands`` entry-point group, so this package never
imports them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import ConfigError, LandslideBatchError
from .progress import hidden

COMMAND_MODULES = (
    "landslide_batch.commands.run",
    "landslide_batch.commands.vectorize",
    "landslide_batch.commands.models",
    "landslide_batch.commands.app",
    "landslide_batch.commands.jobs",
    "landslide_batch.commands.data",
    "landslide_batch.commands.compare",
    "landslide_batch.commands.completion",
)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with the project's one-line errors (what was expected, what was
    found: a bad choice lists the choices) instead of a usage dump; exit 2 as for any bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="landslide-batch",
        description="Region-wide landslide mapping with ensembles of segmentation models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _logging_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for ep in entry_points(group="landslide_batch.commands"):
        ep.load()(sub)
    for command in {id(p): p for p in sub.choices.values()}.values():
        _logging_options(command, top=False)  # -v, -q, --log-file after the command as well
    return parser


#: Loggers of this project; any other (Ray, rasterio, numcodecs, filelock ...) is a library's.
OWN_LOGGERS = ("landslide_batch", "landslide_training")


def _logging_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The logging options, on the top parser and on each command's: after the command they
    override what was given before it (their defaults there leave it as it was)."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="-v: this package's debug messages; -vv: every library's too (else warnings only)",
    )
    group.add_argument("-q", "--quiet", action="store_true", default=default(False), help="warnings and errors only")
    group.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        default=default(None),
        help="append the log to FILE too (at least this package's INFO messages, whatever -q says)",
    )


class _Threshold(logging.Filter):
    """Passes this project's records from ``own`` up, the libraries' from ``libraries`` up."""

    def __init__(self, own: int, libraries: int):
        super().__init__()
        self.own, self.libraries = own, libraries

    def filter(self, record: logging.LogRecord) -> bool:
        mine = record.name.split(".")[0] in OWN_LOGGERS
        return record.levelno >= (self.own if mine else self.libraries)


class _AboveBars(logging.StreamHandler):
    """Console lines written through ``tqdm.write``: above a progress bar, not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001  (logging's own policy: report, never raise)
            self.handleError(record)


@contextmanager
def logging_for(verbose: int, quiet: bool, log_file: Path | None) -> Iterator[None]:
    """Log to stderr (unless the embedding program, or pytest, has its own handlers) and to
    ``log_file``: this package at INFO (``-v`` DEBUG, ``-q`` WARNING), the libraries at WARNING
    unless ``-vv``. The previous levels and handlers come back on exit."""
    own = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    libraries = logging.DEBUG if verbose >= 2 else logging.WARNING
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if not root.handlers:
        handlers.append(_AboveBars(sys.stderr))
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handlers[-1].addFilter(_Threshold(own, libraries))
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--log-file {log_file}: cannot write there ({exc.strerror or exc})") from None
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers[-1].addFilter(_Threshold(min(own, logging.INFO), libraries))
    loggers = [root, *(logging.getLogger(name) for name in OWN_LOGGERS)]
    before = [lg.level for lg in loggers]
    root.setLevel(libraries)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(min(own, logging.INFO if log_file else own))
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process, unless ``MALLOC_ARENA_MAX`` says otherwise.

    glibc gives each thread its own heap; the reader, writer and model threads then keep
    fragmented copies of freed block buffers and the footprint creeps up block after block. Two
    arenas keep peak memory flat at no measured speed cost (stop 10 of the performance work). ``mallopt``
    sets it in the running process; it applies to arenas created afterwards, so call it before
    any thread starts. -> whether the cap was set."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): no per-thread arenas to cap
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Streamlit owns its own option parsing: hand everything after "app" over untouched.
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version (0) or a bad option (2), already printed
        return int(exc.code or 0)
    args.extra = extra
    try:
        with logging_for(args.verbose, args.quiet, args.log_file), hidden(args.quiet):
            return int(args.func(args) or 0)
    except LandslideBatchError as exc:
        print(f"landslide-batch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"landslide-batch {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Console script: ``main``, then the interpreter's ordinary exit, which runs the libraries'
    exit handlers (Ray's shutdown, fsspec's session close, logging's flush)."""
    limit_malloc_arenas()
    sys.exit(main())


if __name__ == "__main__":
    entry()
