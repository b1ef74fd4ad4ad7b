"""``keynet merge SHARD... --out FILE``: combine the shard files of ``keynet extract --num-shards``
(or any hloc-layout h5 files: features or matches) into one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import CLIError, collect_images, guard_outputs, output_file_parent

HELP = "combine shard files (features.h5 or matches.h5) into one, refusing duplicates"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", nargs="+", type=Path, help="the shard files")
    p.add_argument("--out", type=Path, required=True, help="the merged file")
    p.add_argument("--images", type=Path, default=None,
                   help="the image folder the shards were extracted from: report images that no shard holds")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never a shard)")


def main(args: argparse.Namespace) -> int:
    from keynet.pipelines.distributed import merge_h5
    from keynet.pipelines.extract import image_name

    missing_files = [s for s in args.shards if not s.is_file()]
    if missing_files:
        raise CLIError(f"{missing_files[0]}: no such shard file")
    out = output_file_parent(args.out, "--out")
    guard_outputs([out], args.shards, args.overwrite)
    expected = None
    if args.images is not None:
        if not args.images.is_dir():
            raise CLIError(f"--images {args.images}: not a folder")
        expected = [image_name(p, args.images) for p in collect_images([args.images])[0]]
    try:
        report = merge_h5(list(dict.fromkeys(args.shards)), out, expected)
    except ValueError as e:  # duplicates, mixed settings
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"cannot read the shards: {e}") from None
    for name in report.missing:
        print(f"keynet merge: no shard holds {name}", file=sys.stderr)
    print(f"keynet merge: {out}: {len(report.written)} item(s) from {len(args.shards)} shard(s)"
          + (f", {len(report.missing)} image(s) missing" if report.missing else ""), file=sys.stderr)
    return 1 if report.missing else 0
