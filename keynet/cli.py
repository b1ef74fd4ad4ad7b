"""The ``keynet`` command line: ``keynet detect``, ``keynet train``, ``keynet eval``, ``keynet export``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Subcommands whose modules are imported only when used, so `keynet detect` starts fast.
# Each module provides add_arguments(parser) and main(args) -> exit code.
_SUBCOMMANDS = {
    "detect": ("keynet.detect_cli", "detect keypoints in images and write one .npz per image"),
    "train": ("keynet.train.cli", "train Key.Net / Tiny-Key.Net on synthetic homography pairs"),
    "eval": ("keynet.eval.cli", "evaluate detectors on HPatches / Oxford with Key.Net's protocol"),
    "export": ("keynet.export_cli", "write the network, or detection up to top-k, as ONNX"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keynet", description="Key.Net keypoint detector")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"keynet: '{args.command}' is not available in this installation", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
