"""Matching: pairs lists, kornia matchers (checked against kornia called directly and a numpy brute
force), hloc's matches.h5 read the way hloc reads it, USAC geometry on synthetic scenes, and the
two-image ``keynet match``."""

import h5py
import numpy as np
import pytest
import torch

from keynet.io.hloc import MatchFile, names_to_pair
from keynet.matching import (Matcher, estimate_essential, estimate_fundamental, estimate_homography,
                             exhaustive_pairs, read_pairs, sequential_pairs, write_pairs)
from keynet.matching.geometry import recover_pose
from keynet.matching.matchers import matches_to_pairs
from keynet.pipelines.match import match_pairs


def test_pairs(tmp_path):
    names = ["a", "b", "c", "d"]
    assert exhaustive_pairs(names) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    assert sequential_pairs(names, 2) == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")]
    f = tmp_path / "pairs.txt"
    f.write_text("# comment\na b\n\nb a\nc c\nx/y.jpg d extra\n")
    assert read_pairs(f) == [("a", "b"), ("x/y.jpg", "d")]
    write_pairs(f, [("a", "b"), ("c", "d")])
    assert f.read_text() == "a b\nc d\n"
    with pytest.raises(ValueError, match="whitespace"):
        write_pairs(f, [("a b", "c")])


def test_names_to_pair_is_hlocs_rule():
    # hloc/utils/parsers.py: separator.join((name0.replace("/", "-"), name1.replace("/", "-"))), separator "/"
    assert names_to_pair("db/1.jpg", "q/2.jpg") == "db-1.jpg/q-2.jpg"
    assert names_to_pair("a.jpg", "b.jpg", separator="_") == "a.jpg_b.jpg"


def _descriptors(n0=300, n1=250, d=64, seed=0):
    """desc1 holds noisy copies of the first 200 rows of desc0 (shuffled) and distractors."""
    rng = np.random.default_rng(seed)
    desc0 = rng.normal(size=(n0, d)).astype(np.float32)
    perm = rng.permutation(200)
    desc1 = np.vstack([desc0[perm] + 0.3 * rng.normal(size=(200, d)), rng.normal(size=(n1 - 200, d))]).astype(np.float32)
    truth = np.full(n0, -1)
    truth[perm] = np.arange(200)
    return desc0, desc1, truth


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["mnn", "snn", "smnn"])
def test_matcher_equals_kornia(method):
    import kornia.feature as KF

    desc0, desc1, _ = _descriptors()
    matches0, scores0 = Matcher(method, 0.9).match(desc0, desc1)
    d0, d1 = torch.from_numpy(_unit(desc0)), torch.from_numpy(_unit(desc1))
    call = {"mnn": lambda: KF.match_mnn(d0, d1), "snn": lambda: KF.match_snn(d0, d1, 0.9),
            "smnn": lambda: KF.match_smnn(d0, d1, 0.9)}[method]
    _, idx = call()
    idx = idx.numpy()[np.argsort(idx[:, 0].numpy())]  # kornia's mnn lists the matches in its own order
    np.testing.assert_array_equal(matches_to_pairs(matches0), idx)
    m = matches_to_pairs(matches0)
    np.testing.assert_allclose(scores0[m[:, 0]], np.sum(_unit(desc0)[m[:, 0]] * _unit(desc1)[m[:, 1]], 1), atol=1e-5)
    assert np.all(scores0[matches0 < 0] == 0)


def test_mnn_against_numpy_brute_force():
    desc0, desc1, truth = _descriptors()
    dist = np.linalg.norm(_unit(desc0)[:, None] - _unit(desc1)[None], axis=2)
    nn01, nn10 = dist.argmin(1), dist.argmin(0)
    expected = np.where(nn10[nn01] == np.arange(len(desc0)), nn01, -1)
    matches0, _ = Matcher("mnn").match(desc0, desc1)
    np.testing.assert_array_equal(matches0, expected)
    # and the noisy copies are found
    assert np.mean(matches0[:200][truth[:200] >= 0] == truth[:200][truth[:200] >= 0]) > 0.95


def test_match_many_equals_single_pairs():
    desc0, desc1, _ = _descriptors()
    other = _descriptors(seed=1)[1]
    matcher = Matcher("smnn", 0.85)
    for (m, s), d in zip(matcher.match_many(desc0, [desc1, other, desc1[:0]]), [desc1, other, desc1[:0]]):
        m1, s1 = matcher.match(desc0, d)
        np.testing.assert_array_equal(m, m1)
        np.testing.assert_allclose(s, s1, atol=1e-6)
    with pytest.raises(ValueError, match="unknown matcher"):
        Matcher("nn")


def _features_h5(path, descs):
    """A features.h5 in hloc's layout: descriptors stored (D, N)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for name, d in descs.items():
            g = f.create_group(name)
            g["keypoints"] = rng.uniform(0, 300, (len(d), 2)).astype(np.float32)
            g["scores"] = np.ones(len(d), np.float32)
            g["descriptors"] = d.T.copy()
            g["image_size"] = np.array([320, 240])


def _hloc_get_matches(path, name0, name1):
    """hloc's way (hloc/utils/io.py find_pair + get_matches), written independently here."""
    with h5py.File(path, "r") as f:
        key, reverse = names_to_pair(name0, name1), False
        if key not in f:
            key, reverse = names_to_pair(name1, name0), True
        m0 = f[key]["matches0"][()]
    idx = np.where(m0 != -1)[0]
    m = np.stack([idx, m0[idx]], -1)
    return m[:, ::-1] if reverse else m


def test_matches_h5_round_trip_and_resume(tmp_path):
    desc0, desc1, _ = _descriptors()
    other = _descriptors(seed=1)[1]
    feats = tmp_path / "features.h5"
    _features_h5(feats, {"a/x.jpg": desc0, "b.jpg": desc1, "c.jpg": other})
    out = tmp_path / "matches.h5"
    matcher = Matcher("smnn", 0.85)
    stats = match_pairs(feats, [("a/x.jpg", "b.jpg")], out, matcher, progress=False)
    assert stats["matched"] == 1 and stats["skipped"] == 0
    stats = match_pairs(feats, exhaustive_pairs(["a/x.jpg", "b.jpg", "c.jpg"]), out, matcher, progress=False)
    assert stats["matched"] == 2 and stats["skipped"] == 1
    expected = matches_to_pairs(matcher.match(desc0, desc1)[0])
    with h5py.File(out, "r") as f:
        assert "a-x.jpg/b.jpg" in f and f["a-x.jpg/b.jpg/matches0"].shape == (len(desc0),)
        assert "_keynet_partial" not in f or len(f["_keynet_partial"]) == 0
    np.testing.assert_array_equal(_hloc_get_matches(out, "a/x.jpg", "b.jpg"), expected)
    np.testing.assert_array_equal(_hloc_get_matches(out, "b.jpg", "a/x.jpg"), expected[:, ::-1])
    with MatchFile(out, mode="r") as mf:
        np.testing.assert_array_equal(mf.read("b.jpg", "a/x.jpg")[0], expected[:, ::-1])
        assert ("c.jpg", "b.jpg") in mf and ("c.jpg", "zzz") not in mf
    with pytest.raises(ValueError, match="other settings"):
        match_pairs(feats, [("b.jpg", "c.jpg")], out, Matcher("mnn"), progress=False)
    with pytest.raises(ValueError, match="no features"):
        match_pairs(feats, [("b.jpg", "missing.jpg")], tmp_path / "m2.h5", matcher, progress=False)


def _scene(n=200, outliers=60, seed=0):
    """Two calibrated views of random 3D points: pixels, K, R, t (X1 = R X0 + t)."""
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    X = np.c_[rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(4, 8, n)]
    angle = np.deg2rad(10)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([-1.0, 0.1, 0.2])
    proj = lambda P: (P @ K.T)[:, :2] / P[:, 2:]  # noqa: E731
    kp0, kp1 = proj(X), proj(X @ R.T + t)
    kp1[:outliers] = rng.uniform(0, 640, (outliers, 2))
    return kp0, kp1, K, R, t / np.linalg.norm(t), outliers


def test_fundamental_and_essential_inliers_and_pose():
    kp0, kp1, K, R, t, n_out = _scene()
    F = estimate_fundamental(kp0, kp1, 1.0)
    assert F.matrix.shape == (3, 3) and F.inliers[n_out:].mean() > 0.95 and F.inliers[:n_out].mean() < 0.1
    E = estimate_essential(kp0, kp1, K, K, 1.0)
    assert E.inliers[n_out:].mean() > 0.95 and E.inliers[:n_out].mean() < 0.1
    R_est, t_est = recover_pose(E, kp0, kp1, K, K)
    assert np.degrees(np.arccos(np.clip((np.trace(R_est.T @ R) - 1) / 2, -1, 1))) < 0.5
    assert np.degrees(np.arccos(np.clip(t_est @ t, -1, 1))) < 1.0
    assert estimate_fundamental(kp0[:5], kp1[:5]).matrix is None


def test_homography_inliers():
    rng = np.random.default_rng(0)
    H = np.array([[1.1, 0.05, 10], [-0.03, 0.95, -5], [1e-4, 0, 1]])
    kp0 = rng.uniform(0, 500, (150, 2))
    p = np.c_[kp0, np.ones(150)] @ H.T
    kp1 = p[:, :2] / p[:, 2:]
    kp1[:40] += rng.uniform(20, 50, (40, 2))
    g = estimate_homography(kp0, kp1, 3.0)
    np.testing.assert_array_equal(g.inliers, np.arange(150) >= 40)
    np.testing.assert_allclose(g.matrix / g.matrix[2, 2], H, atol=1e-3)


def test_match_two_images_cli(tmp_path, data_dir, capsys):
    import cv2

    from keynet.cli import main

    folder = data_dir / "multiview" / "sacre_coeur" / "mapping"
    images = [folder / "71295362_4051449754.jpg", folder / "93341989_396310999.jpg"]  # an overlapping pair
    viz = tmp_path / "m.png"
    assert main(["match", str(images[0]), str(images[1]), "--viz", str(viz), "--max-size", "480",
                 "--num-keypoints", "1024", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "F inliers" in line and int(line.split("F inliers ")[1].split()[0]) >= 30
    assert cv2.imread(str(viz)) is not None
    assert main(["match", str(images[0]), str(images[1]), "--viz", str(viz)]) == 1  # exists: needs --overwrite


def test_pose_evaluation_helpers(tmp_path, data_dir):
    from keynet.eval.pose import pose_auc, pose_error, read_pose_pairs, read_strecha_camera, strecha_pairs

    assert pose_auc([2.5]) == [0.75, 0.875, 0.9375]  # recall rises linearly to 1 at 2.5 degrees
    assert pose_auc([0.0, 180.0]) == [0.5, 0.5, 0.5]
    cams = data_dir / "multiview" / "strecha_fountain_p11" / "gt_dense_cameras"
    pair = strecha_pairs(cams, ["0000.jpg", "0003.jpg"])[0]
    _, R0, C0 = read_strecha_camera(cams / "0000.jpg.camera")
    _, R1, C1 = read_strecha_camera(cams / "0003.jpg.camera")
    X = np.array([0.5, -1.0, 3.0])
    np.testing.assert_allclose(pair.R @ (R0.T @ (X - C0)) + pair.t, R1.T @ (X - C1), atol=1e-4)  # GT R orthonormal to 1e-6
    assert pose_error(pair.R, 2 * pair.t, pair.R, pair.t) < 1e-6 and pose_error(None, None, pair.R, pair.t) == 180
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = pair.R, pair.t
    line = " ".join(["a.jpg", "b.jpg", "0", "0", *map(str, pair.K0.ravel()), *map(str, pair.K1.ravel()), *map(str, T.ravel())])
    (tmp_path / "p.txt").write_text(line + "\n")
    (read,) = read_pose_pairs(tmp_path / "p.txt")
    np.testing.assert_allclose(read.R, pair.R) and np.testing.assert_allclose(read.t, pair.t)


def test_match_command_on_a_features_file(tmp_path, data_dir):
    """The README's two commands: extract a folder, then match every pair into hloc's matches.h5."""
    import cv2
    import h5py

    from keynet.cli import main

    images = tmp_path / "images"
    images.mkdir()
    img = cv2.imread(str(data_dir / "oxford_affine" / "graf" / "img1.png"))
    for i, (y, x) in enumerate([(0, 0), (20, 30), (40, 10)]):
        cv2.imwrite(str(images / f"im{i}.png"), img[y : y + 300, x : x + 400])
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    assert main(["extract", str(images), "--out", str(features), "--model", "tiny", "--num-keypoints", "300",
                 "--quiet"]) == 0
    assert main(["match", str(features), "--pairs", "exhaustive", "--out", str(matches), "--quiet"]) == 0
    with h5py.File(matches, "r") as f:  # read as hloc does: f[names_to_pair(a, b)]["matches0"]
        for a, b in [("im0.png", "im1.png"), ("im0.png", "im2.png"), ("im1.png", "im2.png")]:
            m = f[names_to_pair(a, b)]["matches0"][()]
            assert m.dtype == np.int32 and (m >= 0).sum() > 50  # overlapping crops of one photo
