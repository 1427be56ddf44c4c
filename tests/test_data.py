"""Datasets and partitions: known answers on the real UCI heart-disease files, the offline
and tampered-file paths of its loader, the ``csv`` dataset, and the partition invariants.

No test here touches the network: the heart-disease download function and ``urlopen`` are
replaced by functions that fail the test (or simulate being offline) wherever a download
could be reached.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import DataConfig, parse_experiment
from bench.data import DATASETS, build_federation, heart_disease
from bench.data.partition import dirichlet_partition, iid_partition
from bench.seeding import Seeds
from bench.types import ConfigError
from conftest import tiny_raw

HOSPITAL_ROWS = {"cleveland": 303, "hungary": 294, "switzerland": 123, "va_long_beach": 200}  # UCI
FILES = ("processed.cleveland.data", "processed.hungarian.data", "processed.switzerland.data", "processed.va.data")
COLS = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num")


@pytest.fixture
def offline(monkeypatch):
    """Fail the test if anything tries to download; report what was attempted."""
    attempts = []

    def no_download(dest):
        attempts.append(dest)
        raise AssertionError(f"tried to download into {dest}")

    def no_network(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(heart_disease, "_download", no_download)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("PRIVBENCH_DATA_DIR", raising=False)
    return attempts


def _read_uci(folder: str) -> np.ndarray:
    """The four files parsed independently of the loader: rows in file order, ``?`` -> NaN."""
    rows = []
    for f in FILES:
        for line in (Path(folder) / f).read_text().splitlines():
            if line.strip():
                rows.append([np.nan if v.strip() == "?" else float(v) for v in line.split(",")])
    return np.asarray(rows)


def _heart(data_dir: str, seed: int = 0):
    cfg = DataConfig(name="heart_disease", partition="natural", data_dir=data_dir, download=False)
    return build_federation(cfg, Seeds(seed))


def _site_parts(fed, truth, i):
    site = fed.sites[i]
    non = truth.candidate_ids[(truth.candidate_site == i) & ~truth.candidate_is_member]
    return site.train.ids, non, site.test.ids


# --------------------------------------------------------------------------- heart disease


def test_heart_disease_has_the_four_hospitals_with_uci_record_counts(heart_data_dir, offline):
    fed, truth = _heart(heart_data_dir)
    assert fed.site_names == tuple(HOSPITAL_ROWS)
    starts = np.cumsum([0, *HOSPITAL_ROWS.values()])
    y_true = (_read_uci(heart_data_dir)[:, 13] > 0).astype(np.int64)
    for i, name in enumerate(fed.site_names):
        mem, non, test = _site_parts(fed, truth, i)
        assert len(mem) + len(non) + len(test) == HOSPITAL_ROWS[name]
        ids = np.concatenate([mem, non, test])
        # the natural partition keeps each hospital's own rows (file order -> ids)
        assert ids.min() == starts[i] and ids.max() == starts[i + 1] - 1 and len(np.unique(ids)) == len(ids)
        assert np.array_equal(fed.sites[i].train.y.numpy(), y_true[mem])  # label = num > 0
    assert sum(len(s.train) for s in fed.sites) + len(fed.test) + int((~truth.candidate_is_member).sum()) == 920
    assert not offline


def test_heart_disease_zero_cholesterol_is_missing_and_imputed_with_the_member_median(heart_data_dir, offline):
    raw = _read_uci(heart_data_dir)
    chol = raw[:, COLS.index("chol")]
    assert (chol[597:720] == 0).all()  # precondition: Switzerland never measured cholesterol
    fed, _ = _heart(heart_data_dir)
    members = np.concatenate([s.train.ids for s in fed.sites])
    m = chol[members]
    observed = m[(m != 0) & ~np.isnan(m)]
    median = float(np.median(observed))
    filled = np.where((m == 0) | np.isnan(m), median, m)
    mean, std = float(filled.mean()), float(filled.std())
    feat = next(f for f in fed.info.features if f.name == "chol")
    assert feat.kind == "continuous"
    assert feat.mean == pytest.approx(mean) and feat.std == pytest.approx(std)
    col = feat.columns[0]
    swiss = fed.sites[fed.site_names.index("switzerland")]
    got = swiss.train.x[:, col].numpy()
    np.testing.assert_allclose(got, (median - mean) / std, rtol=1e-5)
    assert not np.allclose(got, (0.0 - mean) / std, atol=0.5)  # a 0 would be ~5 std below the mean
    # a measured value is only standardised
    cle = fed.sites[0]
    measured = chol[cle.train.ids]
    keep = measured > 0
    np.testing.assert_allclose(cle.train.x[keep, col].numpy(), (measured[keep] - mean) / std, rtol=1e-4, atol=1e-5)


def test_heart_disease_imputation_is_fit_on_members_only(heart_data_dir, offline, monkeypatch):
    """Changing a non-member's (or test record's) value changes nothing the model sees of the
    members; changing a member's value does (the control that shows the test can fail)."""
    cls = DATASETS.get("heart_disease")
    original = cls.load(DataConfig(name="heart_disease", data_dir=heart_data_dir, download=False))
    fed, truth = _heart(heart_data_dir)
    j = [c.name for c in original.columns].index("chol")
    non_member = int(truth.candidate_ids[~truth.candidate_is_member][0])
    test_record = int(fed.test.ids[0])
    member = int(fed.sites[0].train.ids[0])

    def rebuilt(changes: dict[int, float]):
        x = original.x.copy()
        for i, v in changes.items():
            x[i, j] = v
        changed = type(original)(**{**original.__dict__, "x": x})
        monkeypatch.setattr(cls, "load", staticmethod(lambda cfg: changed))
        return _heart(heart_data_dir)

    fed2, _ = rebuilt({non_member: 9999.0, test_record: np.nan})
    assert fed2.info == fed.info  # same imputation value, mean and std for every feature
    for a, b in zip(fed.sites, fed2.sites):
        assert torch.equal(a.train.x, b.train.x)
    pos = {int(k): n for n, k in enumerate(fed2.candidates.ids)}
    feat = next(f for f in fed.info.features if f.name == "chol")
    changed = float(fed2.candidates.x[pos[non_member], feat.columns[0]])
    assert changed == pytest.approx((9999.0 - feat.mean) / feat.std, rel=1e-5)  # the change went through

    fed3, _ = rebuilt({member: 9999.0})
    feat3 = next(f for f in fed3.info.features if f.name == "chol")
    assert feat3.mean != pytest.approx(feat.mean)


def test_heart_disease_checksum_mismatch_names_the_file_and_the_fix(heart_data_dir, offline, tmp_path):
    for f in FILES:
        shutil.copyfile(Path(heart_data_dir) / f, tmp_path / f)
    target = tmp_path / "processed.va.data"
    data = bytearray(target.read_bytes())
    k = next(i for i, b in enumerate(data) if chr(b).isdigit() and chr(b) != "9")
    data[k] += 1  # one digit of one patient differs from UCI's file
    target.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as exc:
        _heart(str(tmp_path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(target) in msg and "checksum" in msg
    assert heart_disease.UCI_URL in msg  # where to get the original
    assert not offline


def test_heart_disease_folder_without_the_files_is_a_clear_error(offline, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as exc:
        _heart(str(tmp_path / "empty"))
    msg = str(exc.value)
    assert "\n" not in msg and "data.data_dir" in msg and str(tmp_path / "empty") in msg
    assert "processed." in msg
    assert not offline, "a named folder without the files must not trigger a download"


def test_heart_disease_without_files_or_download_says_where_to_put_them(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVBENCH_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(name="heart_disease", partition="natural", download=False)
    with pytest.raises(ConfigError) as exc:
        build_federation(cfg, Seeds(0))
    msg = str(exc.value)
    assert "\n" not in msg and "data.data_dir" in msg and "PRIVBENCH_DATA_DIR" in msg and "download" in msg
    assert not offline


def test_heart_disease_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PRIVBENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("PRIVBENCH_CACHE", str(tmp_path / "cache"))
    attempts = []

    def offline_download(dest):
        attempts.append(Path(dest))
        raise urllib.error.URLError("no network in this sandbox")

    monkeypatch.setattr(heart_disease, "_download", offline_download)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network"))
    cfg = DataConfig(name="heart_disease", partition="natural", download=True)
    with pytest.raises(ConfigError) as exc:
        build_federation(cfg, Seeds(0))
    msg = str(exc.value)
    assert "\n" not in msg and "download" in msg and "no network in this sandbox" in msg and "PRIVBENCH_DATA_DIR" in msg
    assert attempts == [tmp_path / "cache" / "uci-heart-disease"]  # it downloads into the cache only


def test_heart_disease_is_found_through_privbench_data_dir(heart_data_dir, offline, monkeypatch, tmp_path):
    folder = tmp_path / "uci-heart-disease"
    folder.mkdir()
    for f in FILES:
        shutil.copyfile(Path(heart_data_dir) / f, folder / f)
    monkeypatch.setenv("PRIVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRIVBENCH_DATA_DIR", str(folder))  # the files directly in it ...
    assert heart_disease.locate(None, download=False) == folder
    monkeypatch.setenv("PRIVBENCH_DATA_DIR", str(tmp_path))  # ... or in its uci-heart-disease/ folder
    assert heart_disease.locate(None, download=False) == folder
    assert not offline


# --------------------------------------------------------------------------- csv


def _write_csv(path: Path, **frame) -> str:
    pd.DataFrame(frame).to_csv(path, index=False)
    return str(path)


def _sample_frame(n_per_site: int = 30) -> dict:
    rng = np.random.default_rng(0)
    n = 3 * n_per_site
    bp = rng.normal(120, 10, n).round(1)
    bp[[3, 40]] = np.nan  # empty cells: missing, imputed
    return {
        "hospital": np.repeat(["b_hosp", "a_hosp", "c_hosp"], n_per_site),
        "age": rng.integers(30, 80, n),
        "sex": rng.choice(["F", "M"], n),  # text: categorical
        "bp": bp,
        "outcome": rng.choice(["healthy", "sick"], n),
    }


def _csv_cfg(path: str, **data):
    return parse_experiment(tiny_raw(data={"name": "csv", "partition": "natural", "path": path, **data})).data


def test_csv_happy_path(tmp_path):
    frame = _sample_frame()
    path = _write_csv(tmp_path / "patients.csv", **frame)
    cfg = _csv_cfg(path, site_column="hospital", label_column="outcome")
    fed, truth = build_federation(cfg, Seeds(0))
    assert fed.site_names == ("a_hosp", "b_hosp", "c_hosp")
    assert fed.info.class_names == ("healthy", "sick")
    assert fed.info.input_shape == (1 + 2 + 1,)  # age, sex one-hot (F, M), bp
    assert [f.name for f in fed.info.features] == ["age", "sex", "bp"]
    assert [f.kind for f in fed.info.features] == ["continuous", "categorical", "continuous"]
    df = pd.DataFrame(frame)
    for i, name in enumerate(fed.site_names):
        mem, non, test = _site_parts(fed, truth, i)
        assert len(mem) + len(non) + len(test) == 30
        rows = df[df.hospital == name]
        sick = int((rows.outcome == "sick").sum())
        ys = torch.cat([fed.sites[i].train.y, fed.sites[i].test.y]).sum().item()
        non_y = fed.candidates.y[torch.as_tensor(np.isin(fed.candidates.ids, non))].sum().item()
        assert ys + non_y == sick  # "sick" is class 1 (labels sorted), per hospital
    for s in fed.sites:
        assert torch.isfinite(s.train.x).all() and torch.isfinite(s.test.x).all()  # missing bp imputed
        onehot = s.train.x[:, 1:3]
        assert torch.equal(onehot.sum(1), torch.ones(len(s.train)))


@pytest.mark.parametrize(
    "drop,key",
    [("hospital", "data.site_column"), ("outcome", "data.label_column")],
)
def test_csv_missing_column(tmp_path, drop, key):
    frame = {k: v for k, v in _sample_frame().items() if k != drop}
    path = _write_csv(tmp_path / "patients.csv", **frame)
    with pytest.raises(ConfigError) as exc:
        build_federation(_csv_cfg(path, site_column="hospital", label_column="outcome"), Seeds(0))
    msg = str(exc.value)
    assert "\n" not in msg and key in msg and repr(drop) in msg and "patients.csv" in msg
    assert "age" in msg  # lists the columns there are


def test_csv_single_class(tmp_path):
    frame = _sample_frame()
    frame["outcome"] = np.full(90, "sick")
    path = _write_csv(tmp_path / "patients.csv", **frame)
    with pytest.raises(ConfigError) as exc:
        build_federation(_csv_cfg(path, site_column="hospital", label_column="outcome"), Seeds(0))
    msg = str(exc.value)
    assert "\n" not in msg and "data.label_column" in msg and "'outcome'" in msg and "2 classes" in msg


def test_csv_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        parse_experiment(tiny_raw(data={"name": "csv", "partition": "natural"}))


def test_csv_numeric_column_with_text_is_refused(tmp_path):
    frame = _sample_frame()
    bp = frame["bp"].astype(object)
    bp[5] = "120 mmHg"  # a typo (pandas itself reads "n/a", "NA" and empty cells as missing)
    frame["bp"] = bp
    path = _write_csv(tmp_path / "patients.csv", **frame)
    with pytest.raises(ConfigError) as exc:
        build_federation(_csv_cfg(path, site_column="hospital", label_column="outcome"), Seeds(0))
    assert "\n" not in str(exc.value) and "'bp'" in str(exc.value)


# --------------------------------------------------------------------------- partitions


def _label_skew(parts, y) -> float:
    """Size-weighted total-variation distance of each site's label distribution from the pooled one."""
    classes = np.unique(y)
    pooled = np.array([(y == c).mean() for c in classes])
    n = sum(len(p) for p in parts)
    tv = 0.0
    for p in parts:
        local = np.array([(y[p] == c).mean() for c in classes])
        tv += len(p) / n * 0.5 * np.abs(local - pooled).sum()
    return tv


@pytest.fixture(scope="module")
def digits_y():
    from sklearn.datasets import load_digits

    return load_digits().target


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


def test_iid_partition_covers_every_record_once(digits_y):
    n = len(digits_y)
    parts = iid_partition(n, 5, np.random.default_rng(0))
    _assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ConfigError, match="data.num_sites"):
        iid_partition(20, 5, np.random.default_rng(0))  # fewer than 8 records each


def test_dirichlet_partition_covers_every_record_once_and_skews_labels(digits_y):
    n = len(digits_y)
    skews = {}
    for alpha in (0.1, 1.0, 100.0):
        parts = dirichlet_partition(digits_y, 5, alpha, np.random.default_rng(0))
        _assert_exact_cover(parts, n)
        assert min(len(p) for p in parts) >= 8
        skews[alpha] = _label_skew(parts, digits_y)
    iid = _label_skew(iid_partition(n, 5, np.random.default_rng(0)), digits_y)
    assert iid < 0.1
    assert skews[0.1] > iid + 0.3
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[100.0] < 0.1  # large alpha approaches IID


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_federation_uses_every_record_exactly_once(partition):
    cfg = parse_experiment(tiny_raw(data={"name": "digits", "partition": partition, "num_sites": 4, "alpha": 0.5},
                                    model={"name": "cnn"})).data
    fed, truth = build_federation(cfg, Seeds(0))
    ids = np.concatenate([*(s.train.ids for s in fed.sites), fed.test.ids,
                          truth.candidate_ids[~truth.candidate_is_member]])
    assert np.array_equal(np.sort(ids), np.arange(1797))


def test_digits_are_1x8x8_images_scaled_to_unit_range():
    from sklearn.datasets import load_digits

    cfg = parse_experiment(tiny_raw(data={"name": "digits", "partition": "iid", "num_sites": 3}, model={"name": "cnn"})).data
    fed, _ = build_federation(cfg, Seeds(0))
    assert fed.info.input_shape == (1, 8, 8) and fed.info.modality == "image" and fed.info.num_classes == 10
    images = load_digits().images
    for s in fed.sites:
        assert tuple(s.train.x.shape[1:]) == (1, 8, 8) and s.train.x.dtype == torch.float32
        assert float(s.train.x.min()) >= 0.0 and float(s.train.x.max()) <= 1.0
        expected = torch.from_numpy(images[s.train.ids] / 16.0).float().unsqueeze(1)
        torch.testing.assert_close(s.train.x, expected)


# --------------------------------------------------------------------------- the data's fingerprint


def _csv_suite(path: str, seeds=(0,)) -> dict:
    return {
        "suite": "fp",
        "base": {"data": {"name": "csv", "partition": "natural", "path": path, "site_column": "hospital", "label_column": "outcome"},
                 "model": {"name": "logreg"}, "train": {"rounds": 1}, "attacks": [{"name": "loss_threshold"}]},
        "seeds": list(seeds),
    }


def _keys(raw) -> list[tuple[str, str, str]]:
    from bench.suite import build_suite

    return [(c.run_key, c.config.setting_key, c.config.data_fingerprint) for c in build_suite(raw).cells]


def test_changed_csv_is_a_new_cell_and_the_same_csv_the_same(tmp_path):
    """Issue 14: run_key hashed only the config, so an edited CSV said "already finished"."""
    import hashlib

    frame = _sample_frame()
    path = tmp_path / "patients.csv"
    _write_csv(path, **frame)
    before = _keys(_csv_suite(str(path), seeds=(0, 1)))
    assert before[0][2] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()  # what sha256sum prints
    assert before[0][1] == before[1][1] and before[0][0] != before[1][0]  # the seeds of one setting share its key

    _write_csv(path, **frame)  # rewritten, same bytes (a new mtime): same cells
    assert _keys(_csv_suite(str(path), seeds=(0, 1))) == before

    flipped = dict(frame, outcome=np.where(frame["outcome"] == "sick", "healthy", "sick"))
    _write_csv(path, **flipped)
    after = _keys(_csv_suite(str(path), seeds=(0, 1)))
    assert {k for k, _, _ in after}.isdisjoint(k for k, _, _ in before)
    assert after[0][1] != before[0][1] and after[0][2] != before[0][2]

    dropped = {k: v[:-5] for k, v in frame.items()}  # five rows fewer
    _write_csv(path, **dropped)
    assert _keys(_csv_suite(str(path)))[0][0] not in {k for k, _, _ in before + after}


def test_fingerprints_of_the_other_datasets_need_no_files(monkeypatch, tmp_path):
    import sklearn

    from bench.data import fingerprint

    monkeypatch.setenv("PRIVBENCH_CACHE", str(tmp_path / "nothing"))
    monkeypatch.delenv("PRIVBENCH_DATA_DIR", raising=False)
    heart = fingerprint(DataConfig(name="heart_disease", partition="natural", download=False))
    assert heart.startswith("sha256:") and len(heart) == len("sha256:") + 64
    assert heart == fingerprint(DataConfig(name="heart_disease", partition="iid", data_dir="/elsewhere"))  # the data, not the config
    assert fingerprint(DataConfig(name="breast_cancer")) == f"sklearn-{sklearn.__version__}:breast_cancer"
    assert fingerprint(DataConfig(name="digits")) == f"sklearn-{sklearn.__version__}:digits"


def test_data_that_cannot_be_read_still_fails_with_its_own_line(tmp_path):
    from bench.data import check_data
    from bench.suite import build_suite

    suite = build_suite(_csv_suite(str(tmp_path / "gone.csv")))  # the suite builds (`validate` lists its cells) ...
    assert suite.cells[0].config.data_fingerprint == "unavailable"
    with pytest.raises(ConfigError) as exc:  # ... and `run` / `validate --data` refuse it with the loader's line
        check_data(c.config for c in suite.cells)
    assert "data.path" in str(exc.value) and "not a file" in str(exc.value)


def test_configs_without_a_suite_keep_their_run_key():
    """A config built directly (tests, run_in_memory) has no fingerprint and hashes as before."""
    import hashlib
    import json

    cfg = parse_experiment(tiny_raw())
    assert cfg.data_fingerprint == ""
    expected = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert cfg.run_key == expected and "data_fingerprint" not in cfg.flat_params()
    with pytest.raises(ConfigError, match="data_fingerprint"):  # never set from YAML
        parse_experiment({**tiny_raw(), "data_fingerprint": "sha256:0"})


# --------------------------------------------------------------------------- messages that name the real problem


def test_heart_disease_names_the_missing_file(offline, heart_data_dir, tmp_path):
    for f in FILES[:3]:
        shutil.copyfile(Path(heart_data_dir) / f, tmp_path / f)
    with pytest.raises(ConfigError) as exc:
        _heart(str(tmp_path))
    assert "processed.va.data" in str(exc.value) and "processed.cleveland.data" not in str(exc.value).split(";")[0]


def test_an_incomplete_privbench_data_dir_is_refused_even_with_a_cache(heart_data_dir, offline, monkeypatch, tmp_path):
    cache = tmp_path / "cache" / "uci-heart-disease"
    cache.mkdir(parents=True)
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in FILES:
        shutil.copyfile(Path(heart_data_dir) / f, cache / f)
    shutil.copyfile(Path(heart_data_dir) / FILES[0], partial / FILES[0])
    monkeypatch.setenv("PRIVBENCH_CACHE", str(tmp_path / "cache"))
    assert heart_disease.locate(None, download=False) == cache  # precondition: the cache alone works
    monkeypatch.setenv("PRIVBENCH_DATA_DIR", str(partial))
    with pytest.raises(ConfigError) as exc:
        heart_disease.locate(None, download=False)
    msg = str(exc.value)
    assert "PRIVBENCH_DATA_DIR" in msg and str(partial) in msg and "processed.va.data" in msg
    assert FILES[0] not in msg.split(";")[0]  # the file it has is not listed as missing


def test_csv_checks_before_pandas(tmp_path):
    """A ragged row, a label with one value per row, an infinite value and site == label each
    say what is wrong (they used to say "fewer than 2 classes", "a hospital has too few records",
    nothing at all, and nothing at all)."""
    frame = _sample_frame()
    path = tmp_path / "p.csv"
    _write_csv(path, **frame)
    lines = path.read_text().splitlines()
    lines[3] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"ragged: line 4 has 6 fields, the header has 5"):
        build_federation(_csv_cfg(str(path), site_column="hospital", label_column="outcome"), Seeds(0))

    _write_csv(path, **dict(frame, outcome=[f"id{i}" for i in range(90)]))
    with pytest.raises(ConfigError, match="as many distinct values as rows"):
        build_federation(_csv_cfg(str(path), site_column="hospital", label_column="outcome"), Seeds(0))

    bp = frame["bp"].copy()
    bp[7] = np.inf
    _write_csv(path, **dict(frame, bp=bp))
    with pytest.raises(ConfigError, match="'bp'.*inf.*row 8"):
        build_federation(_csv_cfg(str(path), site_column="hospital", label_column="outcome"), Seeds(0))

    with pytest.raises(ConfigError, match="same column as data.site_column"):
        _csv_cfg(str(path), site_column="hospital", label_column="hospital")
