"""Image-pair datasets with ground-truth homographies.

Three layouts, detected from the folder or file given:

* HPatches sequences: ``<seq>/1.ppm .. 6.ppm`` (or ``.png``, ...) and ``<seq>/H_1_k``; the path is
  one sequence folder or a folder of sequence folders.
* Oxford Affine: ``<seq>/img1 .. img6`` (any image extension) and ``<seq>/H1toNp``; one sequence
  folder or a folder of them.
* A pairs list: a text file with one pair per line, ``image_a image_b homography_file``, paths
  relative to the list's folder, ``#`` starting a comment.

Every homography maps pixel coordinates of the first image to the second (``x_b ~ H x_a``, pixel
centres at integer coordinates), read with ``np.loadtxt`` as the files are. Pairs of a sequence are
``1-2 .. 1-6``, as in both benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".ppm", ".png", ".pgm", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# The 116 HPatches sequences of Key.Net's ``HSequences_bench/splits.json`` ("full").
HPATCHES_SEQUENCES: tuple[str, ...] = (
    "i_ajuntament", "i_autannes", "i_bologna", "i_books", "i_boutique", "i_bridger", "i_brooklyn",
    "i_castle", "i_chestnuts", "i_contruction", "i_crownday", "i_crownnight", "i_dc", "i_dome",
    "i_duda", "i_fenis", "i_fog", "i_fruits", "i_gonnenberg", "i_greenhouse", "i_greentea",
    "i_indiana", "i_kions", "i_ktirio", "i_kurhaus", "i_leuven", "i_lionday", "i_lionnight",
    "i_londonbridge", "i_melon", "i_miniature", "i_nescafe", "i_nijmegen", "i_nuts", "i_objects",
    "i_parking", "i_partyfood", "i_pencils", "i_pinard", "i_pool", "i_porta", "i_resort", "i_salon",
    "i_santuario", "i_school", "i_ski", "i_smurf", "i_steps", "i_table", "i_tools", "i_toy",
    "i_troulos", "i_veggies", "i_village", "i_whitebuilding", "i_yellowtent", "i_zion",
    "v_abstract", "v_adam", "v_apprentices", "v_artisans", "v_astronautis", "v_azzola", "v_bark",
    "v_bees", "v_beyus", "v_bip", "v_bird", "v_birdwoman", "v_blueprint", "v_boat", "v_bricks",
    "v_busstop", "v_calder", "v_cartooncity", "v_charing", "v_churchill", "v_circus",
    "v_coffeehouse", "v_colors", "v_courses", "v_dirtywall", "v_dogman", "v_eastsouth", "v_feast",
    "v_fest", "v_gardens", "v_grace", "v_graffiti", "v_home", "v_laptop", "v_london", "v_machines",
    "v_man", "v_maskedman", "v_pomegranate", "v_posters", "v_samples", "v_soldiers", "v_strand",
    "v_sunseason", "v_tabletop", "v_talent", "v_tempera", "v_there", "v_underground", "v_vitro",
    "v_wall", "v_wapping", "v_war", "v_weapons", "v_woman", "v_wormhole", "v_wounded", "v_yard",
    "v_yuri",
)  # fmt: skip
# The 8 high-resolution sequences that D2-Net (and most later work) leave out: 108 remain.
HPATCHES_HIGH_RES: tuple[str, ...] = (
    "i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
    "v_artisans", "v_astronautis", "v_talent",
)  # fmt: skip
# Oxford Affine's sequences by the change they test.
OXFORD_GROUPS: dict[str, tuple[str, ...]] = {
    "viewpoint": ("graf", "wall"),
    "illumination/blur": ("leuven", "bikes", "trees", "ubc"),
    "zoom+rotation": ("bark", "boat"),
}
# Left out of Key.Net's "view_test" / "illum_test" splits.
_KEYNET_VIEW_HELD_OUT = ("v_artisans", "v_birdwoman", "v_eastsouth")
_KEYNET_ILLUM_HELD_OUT = ("i_crownday", "i_village", "i_yellowtent")

HPATCHES_SPLITS: dict[str, tuple[str, ...]] = {
    "full": HPATCHES_SEQUENCES,
    "view": tuple(s for s in HPATCHES_SEQUENCES if s.startswith("v_")),
    "illum": tuple(s for s in HPATCHES_SEQUENCES if s.startswith("i_")),
    "view_test": tuple(s for s in HPATCHES_SEQUENCES if s.startswith("v_") and s not in _KEYNET_VIEW_HELD_OUT),
    "illum_test": tuple(s for s in HPATCHES_SEQUENCES if s.startswith("i_") and s not in _KEYNET_ILLUM_HELD_OUT),
    "d2net108": tuple(s for s in HPATCHES_SEQUENCES if s not in HPATCHES_HIGH_RES),
}


@dataclass(frozen=True)
class ImagePair:
    """Two images and the homography ``H`` (3x3, float64) mapping pixels of ``image_a`` to ``image_b``."""

    sequence: str
    name: str  # unique within the dataset, e.g. "graf/1-2"
    image_a: Path
    image_b: Path
    H: np.ndarray = field(repr=False)


@dataclass
class Dataset:
    """Named list of pairs; ``missing`` names the sequences a split asked for but the folder lacks."""

    name: str
    layout: str  # "hpatches", "oxford" or "pairs"
    pairs: list[ImagePair]
    missing: list[str] = field(default_factory=list)

    @property
    def sequences(self) -> list[str]:
        return sorted({p.sequence for p in self.pairs})


def read_homography(path: Path) -> np.ndarray:
    """A 3x3 homography text file (any float formatting ``np.loadtxt`` reads)."""
    H = np.loadtxt(path, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"{path}: expected a 3x3 matrix, got shape {H.shape}")
    return H


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _is_hpatches_sequence(folder: Path) -> bool:
    return (folder / "H_1_2").is_file() and _find_image(folder, "1") is not None


def _is_oxford_sequence(folder: Path) -> bool:
    return (folder / "H1to2p").is_file() and _find_image(folder, "img1") is not None


def _sequence_pairs(folder: Path, layout: str) -> list[ImagePair]:
    stem, h_name = ("{}", "H_1_{}") if layout == "hpatches" else ("img{}", "H1to{}p")
    image_a = _find_image(folder, stem.format(1))
    pairs = []
    for k in range(2, 7):
        image_b = _find_image(folder, stem.format(k))
        h_path = folder / h_name.format(k)
        if image_a is None or image_b is None or not h_path.is_file():
            continue
        H = read_homography(h_path)
        pairs.append(ImagePair(folder.name, f"{folder.name}/1-{k}", image_a, image_b, H))
    return pairs


def load_sequences(root: Path, split: str | None = None) -> Dataset:
    """An HPatches or Oxford dataset: ``root`` is one sequence folder or a folder of them.

    ``split`` (HPatches only) names one of ``HPATCHES_SPLITS``; sequences of the split that are not
    under ``root`` are listed in ``Dataset.missing``, sequences outside it are ignored.
    """
    root = Path(root)
    checks = {"hpatches": _is_hpatches_sequence, "oxford": _is_oxford_sequence}
    for layout, check in checks.items():
        if check(root):
            folders = [root]
            break
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir())
        found = {layout: [d for d in subdirs if check(d)] for layout, check in checks.items()}
        layout = max(found, key=lambda k: len(found[k]))
        folders = found[layout]
        if not folders:
            raise ValueError(f"{root}: no HPatches (1.ppm + H_1_2) or Oxford (img1 + H1to2p) sequences")
    missing: list[str] = []
    if split is not None:
        if layout != "hpatches":
            raise ValueError(f"split {split!r} applies to HPatches only; {root} holds Oxford sequences")
        if split not in HPATCHES_SPLITS:
            raise ValueError(f"unknown HPatches split {split!r}; choose one of {sorted(HPATCHES_SPLITS)}")
        wanted = HPATCHES_SPLITS[split]
        present = {f.name for f in folders}
        missing = [s for s in wanted if s not in present]
        folders = [f for f in folders if f.name in wanted]
    pairs = [p for f in folders for p in _sequence_pairs(f, layout)]
    name = root.name if split is None else f"{root.name}[{split}]"
    return Dataset(name, layout, pairs, missing)


def load_pairs_file(path: Path) -> Dataset:
    """A pairs list: ``image_a image_b homography`` per line, relative to the list's folder."""
    path = Path(path)
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'image_a image_b homography', got {line!r}")
        a, b, h = (path.parent / f for f in fields)
        for p in (a, b, h):
            if not p.is_file():
                raise FileNotFoundError(f"{path}:{lineno}: {p} not found")
        pairs.append(ImagePair(path.stem, f"{lineno}:{a.stem}-{b.stem}", a, b, read_homography(h)))
    return Dataset(path.stem, "pairs", pairs)


def load_dataset(path: str | Path, split: str | None = None) -> Dataset:
    """Load whichever layout ``path`` holds (a pairs list if it is a file, else sequences)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_file():
        if split is not None:
            raise ValueError("a split applies to HPatches folders, not to a pairs list")
        return load_pairs_file(path)
    return load_sequences(path, split)
