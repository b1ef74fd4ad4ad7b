"""Extraction beyond one process: shards for job arrays, Ray Data for clusters, and merging h5 files.

- ``shard_of`` splits the sorted image list deterministically, so that job ``i`` of ``n`` (a Slurm or
  Kubernetes job array) extracts ``keynet extract ... --shard-index i --num-shards n`` into its own
  file, and ``merge_h5`` (``keynet merge``) combines the shards into one ``features.h5``. It works for
  any h5 file of hloc's layout whose items are groups of datasets (images in ``features.h5``, pairs
  in ``matches.h5``), refuses an item that two shards hold, and reports expected items that none holds.
- ``extract_with_ray`` runs the same extraction on Ray Data: Ray reads the files' bytes, a pool of
  actors (each loads the model once) decodes and extracts them, every actor writes its finished
  images to its own shard file, and the driver merges the shards into the output. Work is never
  lost: an actor killed mid-run loses only the image in flight (Ray retries it elsewhere), and a
  rerun first merges the shards a killed run left, then extracts only what is still missing.
  It runs unchanged on a laptop (a local Ray started on the spot) and on a cluster (``address``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from keynet.io.files import write_atomic
from keynet.io.hloc import FeatureFile, copy_item, h5_items, stored_settings
from keynet.pipelines.extract import ExtractReport, image_name


def shard_of(images: list[Path], index: int, count: int) -> list[Path]:
    """Shard ``index`` of ``count``: every ``count``-th image of the sorted list, from ``index``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must lie in [0, {count}) and the number of shards be >= 1, got {index} of {count}")
    return sorted(images)[index::count]


def shard_path(out: Path, index: int, count: int) -> Path:
    """The file of shard ``index``: ``features.h5`` -> ``features.shard-3-of-10.h5``."""
    return out.with_name(f"{out.stem}.shard-{index}-of-{count}{out.suffix}")


@dataclass
class MergeReport:
    """What a merge did: items written, and expected items that no shard holds."""

    written: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _check_shards(shards: list[Path]) -> tuple[dict[str, Path], str | None]:
    """Where each item is, and the shards' common settings; ``ValueError`` if two shards hold the
    same item or were made with different settings."""
    owner: dict[str, Path] = {}
    settings: dict[Path, str | None] = {}
    for shard in shards:
        settings[shard] = stored_settings(shard)
        for name in h5_items(shard):
            if name in owner:
                raise ValueError(f"{name} is in two shards, {owner[name]} and {shard}; merge each item once")
            owner[name] = shard
    other = next((s for s in shards if settings[s] != settings[shards[0]]), None)
    if other is not None:
        raise ValueError(f"{shards[0]} and {other} were made with different settings; merge shards of one run")
    return owner, next(iter(settings.values()), None)


def merge_h5(shards: list[Path], out: Path, expected: Iterable[str] | None = None) -> MergeReport:
    """Combine ``shards`` into a new file ``out`` (written beside it, then renamed onto it, so an
    existing ``out`` is replaced only by a complete file). ``expected``: item names that should be
    there; those that no shard holds are reported. ``ValueError`` for duplicates or mixed settings."""
    import h5py

    owner, settings = _check_shards(shards)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as dst:
            if settings is not None:
                dst.attrs["keynet_settings"] = settings
            for shard in shards:
                with h5py.File(shard, "r") as src:
                    for name in sorted(n for n, s in owner.items() if s == shard):
                        copy_item(src, name, dst)

    write_atomic(out, write)
    missing = sorted(set(expected or ()) - set(owner))
    return MergeReport(written=sorted(owner), missing=missing)


# ------------------------------------------------------------------------------------------ Ray


class _ExtractActor:
    """A Ray Data actor: one ``Extractor`` for its lifetime, finished images into its own shard."""

    def __init__(self, extractor_conf: dict[str, Any], settings: dict[str, Any], root: str, parts: str,
                 threads: int) -> None:
        import torch

        from keynet.features import Extractor

        torch.set_num_threads(threads)
        self.extractor = Extractor(**extractor_conf)
        self.root = Path(root)
        self.shard = FeatureFile(Path(parts) / f"{uuid.uuid4().hex}.h5", settings)

    def __del__(self) -> None:
        self.shard.close()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from keynet.io.image import decode_image

        names, errors = [], []
        for path, data in zip(batch["path"], batch["bytes"]):
            name = image_name(Path(path), self.root)
            try:
                self.shard.write(name, self.extractor.extract(decode_image(data, name)))
                errors.append("")
            except (OSError, ValueError) as e:  # ImageError is a ValueError
                errors.append(str(e) or type(e).__name__)
            names.append(name)
        return {"name": names, "error": errors}


def extract_with_ray(
    images: list[Path],
    root: Path,
    out: Path,
    extractor_conf: dict[str, Any],
    settings: dict[str, Any],
    workers: int = 2,
    threads_per_worker: int = 1,
    address: str | None = None,
) -> ExtractReport:
    """``keynet.pipelines.extract.extract_to_h5`` on Ray Data, with ``workers`` actors.

    ``extractor_conf``: ``keynet.Extractor`` options (picklable: spec strings, not objects).
    ``address``: a running cluster's (``ray.init(address=...)``); None starts a local Ray with
    ``workers * threads_per_worker`` CPUs, or joins the one this process already started.
    """
    import ray

    parts = out.with_name(f"{out.name}.parts")
    parts.mkdir(exist_ok=True)
    report = ExtractReport()
    with FeatureFile(out, settings) as h5:
        _absorb_parts(parts, h5)  # what a killed run finished
        names = {p: image_name(p, root) for p in images}
        report.skipped = sorted(n for n in names.values() if n in h5)
    done = set(report.skipped)
    todo_paths = [p for p in images if names[p] not in done]
    if todo_paths:
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else workers * threads_per_worker,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # One block per file, so that the actors share the files. Reading takes no worker's core, and
        # one read task at a time keeps up with the actors without starting a process per file.
        ds = ray.data.read_binary_files([str(p) for p in todo_paths], include_paths=True, num_cpus=0,
                                        concurrency=1, override_num_blocks=len(todo_paths))
        rows = ds.map_batches(
            _ExtractActor, batch_size=1, concurrency=workers, num_cpus=threads_per_worker,
            fn_constructor_kwargs={"extractor_conf": extractor_conf, "settings": settings, "root": str(root),
                                   "parts": str(parts), "threads": threads_per_worker},
        ).take_all()
        for row in rows:
            (report.failed.append((row["name"], row["error"])) if row["error"] else report.written.append(row["name"]))
    with FeatureFile(out, settings) as h5:
        _absorb_parts(parts, h5)
        h5.record_failures(report.failed, report.written)
    if not any(parts.iterdir()):
        parts.rmdir()  # else a shard could not be read yet: the next run takes it
    report.written.sort()
    return report


def _absorb_parts(parts: Path, h5: FeatureFile) -> None:
    """Move every complete image of the shard files in ``parts`` into ``h5``, then delete them."""
    import h5py

    for shard in sorted(parts.glob("*.h5")):
        try:
            # no lock: an actor that Ray has not yet shut down may still hold its file open
            with h5py.File(shard, "r", locking=False) as src:
                for name in h5_items(src):
                    if name not in h5:
                        h5.copy_from(src, name)
        except OSError:
            continue  # a shard whose actor is still writing it, or was killed creating it
        shard.unlink()
