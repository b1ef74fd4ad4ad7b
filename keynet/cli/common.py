"""What the ``keynet`` subcommands share: options declared once, image collection, output guards and
the one expected-error type that the entry point prints as a single line.

Output rule, the same for every command that writes: an output path never resolves to one of the
command's inputs (refused even with ``--overwrite``), and an existing file is replaced only with
``--overwrite``. Files are written atomically (``keynet.io.files.write_atomic``), so a run that fails
or is killed leaves every file either as it was or complete.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp"}


class CLIError(Exception):
    """An expected failure (bad input, unusable path, unavailable device): ``keynet`` prints the
    message as one line and exits with code 1. Anything else is a bug and keeps its traceback."""


# ------------------------------------------------------------------------------------------ options


def add_model_options(p: argparse.ArgumentParser, num_keypoints: int = 2048, device: bool = True) -> None:
    """``--weights``, ``--model``, ``--num-keypoints`` (and ``--device``) as every detecting command has them."""
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file, keynet's or kornia's layout (default: the shipped weights of --model)")
    p.add_argument("--model", choices=["keynet", "tiny"], default="keynet",
                   help="Key.Net or Tiny-Key.Net (default: %(default)s)")
    p.add_argument("--num-keypoints", type=int, default=num_keypoints,
                   help="keypoints kept per image, the best first (default: %(default)s)")
    if device:
        p.add_argument("--device", default="cpu", help="torch device to run the network on, e.g. cpu or cuda "
                                                        "(default: %(default)s)")


def add_run_options(p: argparse.ArgumentParser, threads: int | None = None, overwrite: bool = True) -> None:
    """``--threads``, ``--quiet`` and (for commands that write) ``--overwrite``."""
    p.add_argument("--threads", type=int, default=threads,
                   help=f"torch and OpenCV threads (default: {threads or 'all cores'})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if overwrite:
        p.add_argument("--overwrite", action="store_true",
                       help="replace output files that exist already (never the inputs, which are always refused)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's and OpenCV's thread counts from ``--threads`` (if given)."""
    if args.threads is None:
        return
    if args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)


def check_device(name: str) -> str:
    """``name`` if torch can run on that device, else a ``CLIError`` that says why."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise CLIError(f"device {name!r}: this PyTorch build has no CUDA support; use --device cpu")
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            raise CLIError(f"device {name!r}: no such CUDA device is available here; use --device cpu")
    elif device.type != "cpu":
        raise CLIError(f"device {name!r} is not supported; use cpu or cuda")
    return name


def require(module: str, extra: str, what: str) -> None:
    """A ``CLIError`` naming the extra to install when the optional ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise CLIError(f"{what} needs {module}: pip install 'keynet[{extra}]'")


def check_positive(value: int, option: str) -> None:
    if value < 1:
        raise CLIError(f"{option} must be at least 1, got {value}")


# ------------------------------------------------------------------------------------------- inputs


def collect_images(inputs: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Image files named, or found (recursively, sorted) under folders; and the problems found."""
    images, problems = [], []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{item}: no images found in folder")
            images.extend(found)
        elif item.exists():
            images.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return list(dict.fromkeys(images)), problems


# ------------------------------------------------------------------------------------------ outputs


def output_dir(path: Path, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents), or say in one line why it cannot be."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"{option} {path} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the output folder {path}: {e.strerror or e}; choose another {option}") from None
    return path


def output_file_parent(path: Path, option: str = "output") -> Path:
    """Create the folder that will hold the output file ``path``; one-line error if it cannot be."""
    if path.is_dir():
        raise CLIError(f"{option} {path} is a folder; give a file name")
    output_dir(path.parent, option=f"folder of {option}")
    return path


def guard_outputs(targets: Iterable[Path], inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse (``CLIError``) if a target is one of the inputs, or exists and ``overwrite`` is false."""
    resolved_inputs = {Path(p).resolve() for p in inputs}
    existing = []
    for target in targets:
        target = Path(target)
        if target.resolve() in resolved_inputs:
            raise CLIError(f"refusing to write {target}: it is one of the inputs; choose another output")
        if target.exists():
            existing.append(target)
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise CLIError(f"{existing[0]}{more} exist(s) already; pass --overwrite to replace, or choose another output")


def run_provenance() -> dict[str, str]:
    """For a training recipe: the command as it was typed, torch's version, the CPU and threads."""
    import shlex
    import sys

    import torch

    from keynet.native import cpu_description

    # `keynet train ...` has argv [.../keynet, train, ...]; `python -m` has [.../cli.py, ...].
    prefix = ["keynet"] if sys.argv[0].endswith("keynet") else ["python", "-m", "keynet.cli"]
    return {"command": shlex.join([*prefix, *sys.argv[1:]]), "torch": torch.__version__,
            "machine": f"{cpu_description()}, {torch.get_num_threads()} threads"}


def check_training_run(conf, resume: bool, overwrite: bool, export: str) -> None:
    """A training command's inputs and outputs (``conf`` a ``keynet.train.loop.RunFolders``): the
    photo folder exists; a run folder holding a run is continued only with ``--resume`` or started
    over with ``--overwrite``; ``--export`` is a new file (or ``--overwrite``) in a writable folder."""
    image_dir = conf.resolved_image_dir()
    if not image_dir.is_dir():
        raise CLIError(f"training photos not found: {image_dir} is not a folder; pass --images DIR (any folder of photos)")
    run = Path(conf.out_dir)
    if not resume and (run / "last.pt").exists() and not overwrite:
        raise CLIError(f"{run} holds a training run (last.pt); pass --resume to continue it or --overwrite to start over")
    if export:
        guard_outputs([Path(export)], [], overwrite)
        output_file_parent(Path(export), "--export")
