"""COLMAP database from hloc files, read back with pycolmap: +0.5 keypoint origin, counts, cameras
(EXIF-less prior, known intrinsics) and the pairs that geometric verification keeps."""

import h5py
import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from keynet.io.colmap import (create_database, import_features, import_matches, parse_intrinsics,  # noqa: E402
                              verified_pairs, verify_matches)
from keynet.io.hloc import MatchFile  # noqa: E402
from keynet.matching.pairs import write_pairs  # noqa: E402


def test_parse_intrinsics():
    assert parse_intrinsics("PINHOLE 2759.48,2764.16,1520.69,1006.81") == ("PINHOLE", [2759.48, 2764.16, 1520.69, 1006.81])
    with pytest.raises(ValueError, match="takes 4"):
        parse_intrinsics("PINHOLE 1,2,3")
    with pytest.raises(ValueError, match="model"):
        parse_intrinsics("FISHEYE 1,2")


@pytest.fixture
def hloc_files(tmp_path, data_dir):
    """Three real images; image b's keypoints are a homography of a's (verifiable), c's are random."""
    folder = data_dir / "multiview" / "sacre_coeur" / "mapping"
    names = ["02928139_3448003521.jpg", "03903474_1471484089.jpg", "10265353_3838484249.jpg"]
    rng = np.random.default_rng(0)
    kp_a = rng.uniform(50, 650, (300, 2))
    H = np.array([[0.9, 0.05, 30], [-0.04, 1.05, 10], [1e-4, 0, 1]])
    p = np.c_[kp_a, np.ones(300)] @ H.T
    kps = {names[0]: kp_a, names[1]: p[:, :2] / p[:, 2:], names[2]: rng.uniform(0, 600, (300, 2))}
    features = tmp_path / "features.h5"
    with h5py.File(features, "w") as f:
        for name, kp in kps.items():
            f[f"{name}/keypoints"] = kp.astype(np.float32)
            f[f"{name}/descriptors"] = np.zeros((8, 300), np.float32)
            f[f"{name}/scores"] = np.ones(300, np.float32)
            f[f"{name}/image_size"] = np.array([1000, 700])
    matches = tmp_path / "matches.h5"
    ident = np.arange(300)
    with MatchFile(matches) as mf:
        mf.write(names[0], names[1], np.where(ident < 250, ident, -1), np.ones(300))
        random = np.where(ident < 40, rng.permutation(300), -1)  # 40 random matches: too few inliers
        mf.write(names[2], names[1], random, np.ones(300))  # stored reversed on purpose
    pairs = [(names[0], names[1]), (names[1], names[2])]
    write_pairs(tmp_path / "pairs.txt", pairs)
    return folder, names, kps, features, matches, pairs, tmp_path / "pairs.txt"


def test_database_round_trip(tmp_path, hloc_files):
    folder, names, kps, features, matches, pairs, pairs_path = hloc_files
    db_path = tmp_path / "database.db"
    ids = create_database(db_path, folder, names)
    import_features(db_path, ids, features)
    assert import_matches(db_path, ids, matches, pairs) == 2
    verify_matches(db_path, pairs_path)
    with pycolmap.Database.open(db_path) as db:
        assert db.num_images() == 3 and db.num_cameras() == 3  # one camera per image
        for name in names:
            image = db.read_image_with_name(name)
            np.testing.assert_allclose(db.read_keypoints(image.image_id)[:, :2], kps[name] + 0.5, atol=1e-3)
            camera = db.read_camera(image.camera_id)
            assert (camera.width, camera.height) == tuple(int(v) for v in _size(folder / name))
        assert db.num_matched_image_pairs() == 2
        m = db.read_matches(ids[names[1]], ids[names[2]])
        assert len(m) == 40
    verified = verified_pairs(db_path)
    assert list(verified) == [(names[0], names[1])] or list(verified) == [(names[1], names[0])]
    assert 240 <= next(iter(verified.values())) <= 250


def test_known_intrinsics_shared(tmp_path, hloc_files, data_dir):
    folder, names, *_ = hloc_files
    with pytest.raises(ValueError, match="shared camera"):  # sacre_coeur's sizes differ
        create_database(tmp_path / "x.db", folder, names, camera_mode="single")
    folder = data_dir / "multiview" / "strecha_fountain_p11" / "images"
    names = ["0000.jpg", "0001.jpg"]
    ids = create_database(tmp_path / "db.db", folder, names, camera_model="PINHOLE", camera_params=[800, 810, 400, 300])
    with pycolmap.Database.open(tmp_path / "db.db") as db:
        cameras = db.read_all_cameras()
        assert len(cameras) == 1 and cameras[0].model_name == "PINHOLE"
        np.testing.assert_allclose(cameras[0].params, [800, 810, 400, 300])
        assert {db.read_image(i).camera_id for i in ids.values()} == {cameras[0].camera_id}
    with pytest.raises(FileExistsError):
        create_database(tmp_path / "db.db", folder, names)


def _size(path):
    import cv2

    h, w = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
    return w, h


def test_colmap_cli(tmp_path, hloc_files, capsys):
    from keynet.cli import main

    folder, names, kps, features, matches, pairs, pairs_path = hloc_files
    db = tmp_path / "cli.db"
    assert main(["colmap", str(features), str(matches), "--images", str(folder), "--database", str(db),
                 "--pairs", str(pairs_path)]) == 0
    assert "2 matched pairs, 1 verified" in capsys.readouterr().out
    assert main(["colmap", str(features), str(matches), "--images", str(folder), "--database", str(db)]) == 1
