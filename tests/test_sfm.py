"""``keynet sfm`` end to end on sacre_coeur (10 photos of about 1000 px, about 40 s on 2 cores), and the
resize-and-map-back of keypoints."""

import numpy as np
import pytest

from keynet.features.extractor import resize_for_extraction, to_original_pixels


def test_resize_maps_keypoints_back():
    image = np.zeros((2048, 3072), np.float32)
    image[1000, 1500] = 1.0
    small, sx, sy = resize_for_extraction(image, 1536)
    assert small.shape == (1024, 1536) and sx == sy == 2.0
    # pixel (750, 500) of the small image covers original pixels 1500..1501 and 1000..1001: centre at +0.5
    np.testing.assert_allclose(to_original_pixels(np.array([[750.0, 500.0]]), sx, sy), [[1500.5, 1000.5]])
    assert resize_for_extraction(image, 0)[0] is image and resize_for_extraction(image, 4000)[1:] == (1.0, 1.0)


def test_sfm_cli_sacre_coeur(tmp_path, data_dir, capsys):
    pycolmap = pytest.importorskip("pycolmap")

    from keynet.cli import main

    images = data_dir / "multiview" / "sacre_coeur" / "mapping"
    out = tmp_path / "out"
    args = ["sfm", str(images), "--out", str(out), "--max-size", "1000", "--quiet", "--threads", "2"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert "registered" in line
    model = pycolmap.Reconstruction(out / "model")
    assert model.num_reg_images() >= 8 and model.num_points3D() > 300
    assert model.compute_mean_reprojection_error() < 2.0
    # keypoints are in original pixels although detected at 640 px
    import h5py

    with h5py.File(out / "features.h5", "r") as f:
        w, h = f["10265353_3838484249.jpg/image_size"][()]
        assert (w, h) == (1068, 694) and f["10265353_3838484249.jpg/keypoints"][()][:, 0].max() > 800
    assert (out / "model.png").is_file()
    assert main(args) == 1  # the database and model exist: --overwrite needed
    assert main(args + ["--overwrite"]) == 0  # features and matches are reused


def test_mapper_runs_again_when_its_model_has_no_3d_point(tmp_path, monkeypatch):
    # pycolmap's mapper stood in by a fake: the first seed returns 3 of 4 images registered but no 3D
    # point (as COLMAP's filtering left it once), the second a real 2-image model.
    pycolmap = pytest.importorskip("pycolmap")
    from keynet.pipelines.sfm import default_conf, incremental_mapping

    class Model:
        def __init__(self, reg, points):
            self.reg, self.points = reg, points

        def num_reg_images(self):
            return self.reg

        def num_points3D(self):
            return self.points

        def write_binary(self, path):
            (tmp_path / "written").mkdir(exist_ok=True)
            (tmp_path / "written" / f"{self.reg}_{self.points}").touch()

    runs = {0: {0: Model(3, 0)}, 1: {0: Model(2, 50)}, 2: {0: Model(1, 9)}}
    seeds = []

    def fake_mapping(database, image_dir, out, options, **callbacks):
        seeds.append(options.random_seed)
        return runs[options.random_seed]

    monkeypatch.setattr(pycolmap, "incremental_mapping", fake_mapping)
    best = incremental_mapping(tmp_path / "db", tmp_path, tmp_path, {**default_conf, "threads": 1}, 4, progress=False)
    # the first run's 3 of 4 images did not stop the retries; the second's 2 of 4, with points, did
    assert seeds == [0, 1]
    assert [(m.reg, m.points) for m in best] == [(2, 50)]
    assert sorted(p.name for p in (tmp_path / "written").iterdir()) == ["2_50"]
