"""Extraction throughput beyond one process: one process, shards run side by side (as a job array
would), and Ray Data with 1 and 2 actors, on the same folder; images/s and scaling efficiency.

    python benchmarks/distributed.py [--images N] [--workers 2]

The folder holds N crops (800x640 by default) of the Oxford Affine images. Every configuration
extracts the whole folder with the same settings (Key.Net, gradient orientation, SIFT, 2,048
keypoints) into a fresh file, as separate ``keynet extract`` processes, so that start-up (Python,
torch, the model, Ray) is counted as a user meets it. Each worker runs on one thread. Scaling
efficiency = throughput / (workers x the throughput of one worker of the same kind).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from keynet.native import cpu_description
from keynet.paths import shared_data_dir

SEQUENCES = ("bark", "bikes", "boat", "graf", "leuven", "trees", "ubc", "wall")


def make_folder(root: Path, count: int, size: tuple[int, int]) -> Path:
    folder = root / "images"
    folder.mkdir()
    w, h = size
    for i in range(count):
        seq = SEQUENCES[i % len(SEQUENCES)]
        img = cv2.imread(str(shared_data_dir() / "oxford_affine" / seq / f"img{1 + i // len(SEQUENCES) % 6}.png"))
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i:04d}_{seq}.png"), img)
    return folder


def keynet(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keynet.cli", "extract", *args, "--quiet", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(procs: list[subprocess.Popen]) -> float:
    start = time.perf_counter()
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"extraction failed: {err[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="800x640")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_folder(root, args.images, size)
        n, k = args.images, args.workers
        rows = []
        start = time.perf_counter()
        single = timed([keynet(str(folder), "--out", str(root / "single.h5"))])
        rows.append(("1 process", 1, single))
        shards = timed([keynet(str(folder), "--out", str(root / "sharded.h5"), "--shard-index", str(i),
                               "--num-shards", str(k)) for i in range(k)])
        rows.append((f"{k} shards side by side", k, shards))
        for workers in (1, k):
            t = timed([keynet(str(folder), "--out", str(root / f"ray{workers}.h5"), "--ray", "--workers", str(workers))])
            rows.append((f"Ray Data, {workers} actor(s)", workers, t))
        print(f"CPU: {cpu_description()}; {n} images of {size[0]}x{size[1]}, Key.Net + gradient orientation + SIFT, "
              f"2,048 keypoints, one thread per worker; {time.perf_counter() - start:.0f} s in all\n")
        print(f"{'configuration':28s} {'workers':>7s} {'time (s)':>9s} {'images/s':>9s} {'efficiency':>10s}")
        base = {"process": n / single, "Ray": n / rows[2][2]}
        for label, workers, t in rows:
            kind = "Ray" if label.startswith("Ray") else "process"
            rate = n / t
            print(f"{label:28s} {workers:7d} {t:9.1f} {rate:9.2f} {rate / (workers * base[kind]):10.0%}")


if __name__ == "__main__":
    main()
