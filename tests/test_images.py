"""The ``images`` dataset: folders and manifests of real PNG files, hospitals, subgroups, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.config import DataConfig, FairnessConfig, SensitiveAttributeConfig
from bench.data import build_federation, fingerprint
from bench.data.images import describe_images, listing, load_images
from bench.seeding import Seeds
from bench.types import ConfigError
from image_fixtures import write_collection

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_collection(tmp_path_factory.mktemp("imgs"), sites=3, per_site=100, size=16)


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(name="images", path=str(path), **kw)


def test_manifest_reads_every_image_with_its_label_site_and_range(manifest):
    raw = load_images(_cfg(manifest, partition="natural"))
    assert raw.x.shape == (300, 1, 16, 16) and raw.image_shape == (1, 16, 16)
    assert raw.site_names == ("hospital_0", "hospital_1", "hospital_2")
    assert np.bincount(raw.site).tolist() == [100, 100, 100]
    assert raw.class_names == ("benign", "malignant")
    assert 0.0 <= raw.x.min() and raw.x.max() <= 1.0
    # the fixture writes the label into the bright half: the pixels must say it (known answer)
    left, right = raw.x[..., :8].mean(axis=(1, 2, 3)), raw.x[..., 8:].mean(axis=(1, 2, 3))
    assert np.array_equal((right > left).astype(np.int64), raw.y)
    assert [c.name for c in raw.meta_columns] == ["sex"] and raw.meta.shape == (300, 1)


def test_folder_layouts_and_resize_to_rgb(tmp_path):
    folder = write_collection(tmp_path / "f", sites=2, per_site=10, layout="folder")
    lst = listing(_cfg(folder))
    assert lst.source == "folder <site>/<label>/<file>" and set(lst.sites) == {"hospital_0", "hospital_1"}
    raw = load_images(_cfg(folder, image_size=(8, 12), image_mode="rgb"))
    assert raw.x.shape == (20, 3, 8, 12)
    assert np.allclose(raw.x[:, 0], raw.x[:, 1])  # grey files read as RGB: equal channels
    labels = write_collection(tmp_path / "l", sites=1, per_site=10, layout="labels")
    lst = listing(_cfg(labels))
    assert lst.source == "folder <label>/<file>" and lst.sites is None


def test_federation_of_three_hospitals_and_subgroups_never_model_inputs(manifest):
    fairness = FairnessConfig(attributes=(SensitiveAttributeConfig(name="sex"),))
    fed, truth = build_federation(_cfg(manifest, partition="natural"), Seeds(0), fairness)
    assert [s.name for s in fed.sites] == ["hospital_0", "hospital_1", "hospital_2"]
    assert fed.info.modality == "image" and fed.info.input_shape == (1, 16, 16)
    (sex,) = truth.sensitive
    assert sex.groups == ("F", "M") and not sex.model_input
    assert set(np.unique(sex.codes)) <= {0, 1}


def test_describe_states_layout_counts_size_and_scaling(manifest):
    text = describe_images(_cfg(manifest, partition="natural", image_size=(12, 12)))
    assert "300 images, manifest manifest.csv" in text
    assert "hospital_0: 100, hospital_1: 100, hospital_2: 100" in text
    assert "stored sizes (HxW): 16x16 (300); read as gray 1x12x12, resized (bilinear) to 12x12" in text
    assert "scaled to [0, 1]" in text and "sex (categories F, M)" in text
    assert str(manifest.parent) not in text  # no file paths in what is printed


def test_fingerprint_follows_the_pixels(tmp_path):
    from PIL import Image

    m = write_collection(tmp_path, sites=1, per_site=6)
    cfg = _cfg(m)
    before = fingerprint(cfg)
    assert before.startswith("sha256:") and fingerprint(cfg) == before
    target = tmp_path / "img" / "s0_img0003.png"
    arr = np.asarray(Image.open(target)).copy()
    arr[0, 0] ^= 1
    os.utime(target, ns=(1, 1))  # an old time first: a changed file must not hide behind the cache
    Image.fromarray(arr, mode="L").save(target)
    assert fingerprint(cfg) != before


@pytest.mark.parametrize(
    "make, keys, expected",
    [
        (lambda p: write_collection(p, sites=1, per_site=6, sizes_vary=True), {}, "data.image_size: the images have 2 sizes"),
        (lambda p: write_collection(p, sites=1, per_site=6), {"path_column": "file"}, "data.path_column: manifest manifest.csv has no column 'file'"),
        (lambda p: write_collection(p, sites=1, per_site=6), {"site_column": "hospital", "partition": "natural"}, "data.site_column: manifest manifest.csv has no column 'hospital'"),
        (lambda p: p / "nowhere", {}, "does not exist"),
        (lambda p: (p / "x.txt").write_text("a") and p / "x.txt", {}, "neither a folder nor a .csv/.parquet manifest"),
    ],
)
def test_bad_collections_are_one_line_errors(tmp_path, make, keys, expected):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_images(_cfg(path, **keys))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_missing_and_broken_files_are_named(tmp_path):
    m = write_collection(tmp_path, sites=1, per_site=6)
    (tmp_path / "img" / "s0_img0001.png").unlink()
    with pytest.raises(ConfigError, match=r"1 image file\(s\) of manifest manifest.csv not found: img/s0_img0001.png"):
        load_images(_cfg(m))
    m = write_collection(tmp_path / "b", sites=1, per_site=6)
    (tmp_path / "b" / "img" / "s0_img0002.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"image 'img/s0_img0002.png' cannot be read"):
        load_images(_cfg(m))


def test_validate_data_describes_the_collection_in_the_cli(manifest, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""\
        suite: images-check
        base:
          data: {{name: images, path: {manifest}, partition: natural}}
          model: {{name: cnn, channels: 4}}
          train: {{rounds: 1}}
        variants:
          - {{defenses: []}}
        seeds: [0]
        """))
    out = subprocess.run([sys.executable, "-m", "bench", "validate", str(suite), "--data"], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "300 images, manifest manifest.csv" in out.stdout and "hospitals (3)" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite.read_text().replace("partition: natural", "partition: natural, image_size: [0, 8]"))
    out = subprocess.run([sys.executable, "-m", "bench", "validate", str(bad)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 2 and "data.image_size: got [0, 8]" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_three_hospital_image_collection_runs_end_to_end(manifest, tmp_path):
    """≥ 300 PNGs over 3 hospitals: no defense and DP-SGD, membership attacks, subgroups, logged."""
    import mlflow

    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""\
        suite: images-e2e
        base:
          data: {{name: images, path: {manifest}, partition: natural}}
          model: {{name: cnn, channels: 4}}
          train: {{rounds: 3, local_epochs: 1, batch_size: 16, lr: 0.1}}
          privacy: {{accountant: rdp}}
          fairness: {{attributes: [sex]}}
          attacks: [{{name: loss_threshold}}, {{name: lira, num_references: 4, fixed_variance: true}}]
        variants:
          - {{defenses: []}}
          - {{defenses: [{{name: dp_sgd, target_epsilon: 4.0, max_grad_norm: 1.0}}]}}
        seeds: [0]
        """))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--tracking-uri", uri, "-q"], capture_output=True,
                         text=True, cwd=REPO, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("images-e2e")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "utility/test_accuracy" in r.data.metrics]
    assert len(runs) == 2
    for r in runs:
        assert r.data.tags["dataset"] == "images:" + manifest.parent.name
        assert r.data.metrics["utility/test_accuracy"] > 0.9  # the bright half is easy to learn
        assert "fairness/sex/F/accuracy" in r.data.metrics
    dp = next(r for r in runs if "dp_sgd" in r.info.run_name)
    assert abs(dp.data.metrics["privacy/epsilon"] - 4.0) < 0.05
