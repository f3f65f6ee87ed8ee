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
from importlib.metadata import entry_points

from .errors import LandslideBatchError

COMMAND_MODULES = (
    "landslide_batch.commands.run",
    "landslide_batch.commands.vectorize",
    "landslide_batch.commands.models",
    "landslide_batch.commands.app",
    "landslide_batch.commands.jobs",
    "landslide_batch.commands.data",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landslide-batch",
        description="Region-wide landslide mapping with ensembles of segmentation models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for ep in entry_points(group="landslide_batch.commands"):
        ep.load()(sub)
    return parser


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
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except LandslideBatchError as exc:
        print(f"landslide-batch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"landslide-batch {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Console script: ``main``, then exit without the interpreter's teardown of torch and its
    modules (over a second after a region job). Every file is closed and logs are flushed first."""
    limit_malloc_arenas()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
