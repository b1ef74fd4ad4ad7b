"""The ``keynet`` command: one module of this package per subcommand.

Each subcommand module provides ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> exit code``; modules are imported when the parser is built, but heavy libraries only
inside ``main``, so ``keynet --help`` starts fast.

Errors: expected failures (``CLIError``, and operating-system errors such as a missing file, a
read-only folder or a full disk) print one line ``keynet <command>: <what failed>`` and exit with
code 1; ``--debug`` shows their traceback too. Anything else is a bug and always shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from .common import CLIError

SUBCOMMANDS = ("detect", "extract", "merge", "match", "colmap", "sfm", "export", "train", "train_descriptor", "pairs", "eval")


def build_parser() -> argparse.ArgumentParser:
    from keynet import __version__

    parser = argparse.ArgumentParser(prog="keynet", description="Key.Net keypoint detection, from images to files")
    parser.add_argument("--version", action="version", version=f"keynet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = sub.add_parser(name.replace("_", "-"), help=module.HELP, description=module.HELP)
        p.set_defaults(_main=module.main)
        module.add_arguments(p)
    return parser


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e)
    where = f": {e.filename}" if e.filename else ""
    hint = {
        errno.ENOSPC: "; free some disk space and run again",
        errno.EROFS: "; choose a writable output",
        errno.EACCES: "; check the permissions or choose another path",
        errno.EDQUOT: "; free some disk space and run again",
    }.get(e.errno, "")
    return f"{what}{where}{hint}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except (CLIError, OSError) as e:
        if args.debug:
            raise
        line = _os_error_line(e) if isinstance(e, OSError) else str(e)
        print(f"keynet {args.command}: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"keynet {args.command}: interrupted; files already written are complete", file=sys.stderr)
        return 130
