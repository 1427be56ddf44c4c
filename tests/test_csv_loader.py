"""The CSV loader says what it did (issue 13, item 5): identifier columns are declared, not
used as features; thousands separators are read as numbers; a label with more than two values
is binarised or declared multi-class, never guessed; the site column is needed only for natural
hospitals; a relative path's error shows where it looked; the data is named after its file; and
:func:`bench.data.describe_csv` reports how every column was read and each hospital's counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.config import parse_experiment
from bench.data import build_federation, csv_report, dataset_display_name, describe_csv
from bench.data.csv_data import _looks_like_id_name
from bench.seeding import Seeds
from bench.types import ConfigError
from conftest import tiny_raw

N = 120


def _frame(n: int = N) -> dict:
    rng = np.random.default_rng(3)
    income = rng.integers(20, 400, n) * 1000 + rng.integers(0, 10, n) * 100
    return {
        "patient_id": [f"P{5000 + i}" for i in rng.permutation(n)],
        "hospital": np.repeat(["north", "south", "east"], n // 3),
        "age": rng.integers(30, 80, n),
        "income": [f"{v:,}" for v in income],  # "265,300": one number, written with a separator
        "sex": rng.choice(["F", "M"], n),
        "grade": np.arange(n) % 5,  # 0-4: not binary
    }


def _write(path: Path, frame: dict) -> str:
    pd.DataFrame(frame).to_csv(path, index=False)
    return str(path)


def _cfg(path: str, **data):
    section = {"name": "csv", "partition": "natural", "path": path, "site_column": "hospital", "label_column": "grade", **data}
    return parse_experiment(tiny_raw(data=section)).data


def _refusal(cfg) -> str:
    with pytest.raises(ConfigError) as exc:
        build_federation(cfg, Seeds(0))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_refused_until_the_id_and_the_label_are_declared_then_read_as_declared(tmp_path):
    frame = _frame()
    path = _write(tmp_path / "patients.csv", frame)

    for declared in ({}, {"id_columns": ["patient_id"]}):  # the 0-4 label is refused until its meaning is declared
        msg = _refusal(_cfg(path, **declared))
        assert "data.label_column" in msg and "'grade'" in msg and "0, 1, 2, 3, 4" in msg
        assert "data.positive_labels" in msg and "data.multiclass: true" in msg

    for label in ({"positive_labels": [3, 4]}, {"multiclass": True}):  # ... and the identifier until it is listed
        msg = _refusal(_cfg(path, **label))  # (it would have been 120 one-hot levels)
        assert "data.id_columns" in msg and "'patient_id'" in msg and "data.drop_columns" in msg
        assert "P50" not in msg  # an identifier's values are never written out

    fed, _ = build_federation(_cfg(path, id_columns=["patient_id"], positive_labels=[3, 4]), Seeds(0))
    assert [f.name for f in fed.info.features] == ["age", "income", "sex"]  # no patient_id, no hospital, no grade
    assert [f.kind for f in fed.info.features] == ["continuous", "continuous", "categorical"]
    assert fed.info.input_shape == (1 + 1 + 2,)  # income is one continuous input, not a level per value
    assert fed.info.num_classes == 2 and fed.info.class_names == ("0|1|2", "3|4")
    # grade 3 or 4 -> 1: the candidates (members and non-members) and the test records hold every row once
    n_positive = int((np.asarray(frame["grade"]) >= 3).sum())
    assert int(fed.candidates.y.sum()) + sum(int(s.test.y.sum()) for s in fed.sites) == n_positive
    assert set(np.unique(fed.candidates.y.numpy())) == {0, 1}

    # the thousands column holds the numbers themselves: standardised income matches the file's
    income = np.array([float(v.replace(",", "")) for v in frame["income"]])
    feat = fed.info.features[1]
    train = np.concatenate([s.train.x[:, 1].numpy() for s in fed.sites]) * feat.std + feat.mean
    assert set(np.round(train, 0)) <= set(income)

    multi, _ = build_federation(_cfg(path, drop_columns=["patient_id"], multiclass=True), Seeds(0))
    assert multi.info.num_classes == 5 and multi.info.class_names == ("0", "1", "2", "3", "4")


def test_a_binary_label_is_mapped_in_sorted_order_and_said_so(tmp_path):
    frame = dict(_frame(), grade=np.where(np.arange(N) % 3 == 0, "sick", "well"))
    path = _write(tmp_path / "p.csv", frame)
    cfg = _cfg(path, id_columns=["patient_id"])
    fed, _ = build_federation(cfg, Seeds(0))
    assert fed.info.class_names == ("sick", "well")
    line = next(c for c in csv_report(cfg).columns if c.name == "grade")
    assert line.role == "label" and "sick -> 0" in line.detail and "well -> 1" in line.detail and "sorted" in line.detail
    flipped, _ = build_federation(_cfg(path, id_columns=["patient_id"], positive_labels=["sick"]), Seeds(0))
    assert flipped.info.class_names == ("well", "sick")
    msg = _refusal(_cfg(path, id_columns=["patient_id"], positive_labels=["ill"]))
    assert "data.positive_labels" in msg and "'ill'" in msg and "sick, well" in msg


def test_iid_needs_no_site_column_and_does_not_read_one(tmp_path):
    frame = dict(_frame(), grade=np.arange(N) % 2)
    no_site = _write(tmp_path / "no_site.csv", {k: v for k, v in frame.items() if k != "hospital"})
    fed, _ = build_federation(_cfg(no_site, partition="iid", num_sites=3, id_columns=["patient_id"]), Seeds(0))
    assert fed.site_names == ("site0", "site1", "site2")
    assert "'hospital'" in _refusal(_cfg(no_site, id_columns=["patient_id"]))  # natural still needs it

    with_site = _write(tmp_path / "with_site.csv", frame)
    cfg = _cfg(with_site, partition="iid", num_sites=3, id_columns=["patient_id"])
    fed, _ = build_federation(cfg, Seeds(0))
    assert "hospital" not in [f.name for f in fed.info.features]
    line = next(c for c in csv_report(cfg).columns if c.name == "hospital")
    assert line.role == "unused site" and "not a feature" in line.detail


def test_the_report_names_every_column_and_counts_each_hospital(tmp_path):
    frame = _frame()
    age = frame["age"].astype(float)
    age[[2, 7, 11]] = np.nan
    frame["age"] = age
    frame["notes"] = ["x"] * N
    path = _write(tmp_path / "patients.csv", frame)
    cfg = _cfg(path, id_columns=["patient_id"], drop_columns=["notes"], positive_labels=[4])
    report = csv_report(cfg)
    text = describe_csv(cfg)
    assert text == report.render() and report.dataset == "csv:patients" and "csv:patients" in text
    roles = {c.name: c.role for c in report.columns}
    assert roles == {"patient_id": "id", "hospital": "site", "age": "continuous", "income": "continuous",
                     "sex": "categorical", "grade": "label", "notes": "dropped"}
    for c in report.columns:
        assert any(line.lstrip().startswith(c.name) for line in text.splitlines()), c.name
    detail = {c.name: c.detail for c in report.columns}
    assert "thousands separators parsed" in detail["income"]
    assert "missing 3 of 120" in detail["age"] and "median" in detail["age"]
    assert "2 levels: F, M" in detail["sex"]
    assert "[4] -> 1" in detail["grade"]
    assert "P50" not in text  # identifiers are never written out
    grades = pd.DataFrame(frame)
    for h in report.hospitals:
        rows = grades[grades.hospital == h.name]
        assert h.rows == len(rows) and h.per_class == (int((rows.grade != 4).sum()), int((rows.grade == 4).sum()))
    # iid: the split the cell's seed makes
    iid = _cfg(path, partition="iid", num_sites=4, id_columns=["patient_id"], drop_columns=["notes"], positive_labels=[4])
    split = csv_report(iid, seed=1)
    assert [h.name for h in split.hospitals] == ["site0", "site1", "site2", "site3"]
    assert sum(h.rows for h in split.hospitals) == N and "seed 1" in split.partition


def test_identifiers_are_spotted_by_name_uniqueness_or_a_row_number(tmp_path):
    assert all(map(_looks_like_id_name, ["id", "ID", "patient_id", "PatientID", "record-uuid", "MRN", "subject_no", "id_patient"]))
    assert not any(map(_looks_like_id_name, ["age", "paid", "covid", "idle_days", "hospital", "number_of_visits", "valid"]))
    base = dict(_frame(), grade=np.arange(N) % 2)
    base.pop("patient_id")
    for column, values, why in [
        ("RecordID", np.arange(N) * 7 + 3, "named like an identifier"),  # unique integers
        ("name", [f"person {i}" for i in range(N)], "different text value in every row"),
        ("", np.arange(N), "row number"),  # pandas' index written without index=False: "Unnamed: 0"
    ]:
        path = _write(tmp_path / "t.csv", {column: values, **base})
        msg = _refusal(_cfg(path))
        assert why in msg and "data.id_columns" in msg, msg
    ok = _write(tmp_path / "ok.csv", {"visit_id": np.arange(N) % 40, **base})  # repeated: not one per row
    fed, _ = build_federation(_cfg(ok), Seeds(0))
    assert "visit_id" in [f.name for f in fed.info.features]


@pytest.mark.parametrize("value", ["120,5", "1.234,5", "1,23"])
def test_commas_that_are_not_thousands_separators_are_refused(tmp_path, value):
    frame = dict(_frame(), grade=np.arange(N) % 2)
    frame["bp"] = ["130,000"] * (N - 1) + [value]
    path = _write(tmp_path / "p.csv", frame)
    msg = _refusal(_cfg(path, id_columns=["patient_id"]))
    assert "'bp'" in msg and "not thousands separators" in msg and repr(value) in msg


def test_a_relative_path_error_shows_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _refusal(_cfg("data/nowhere.csv"))
    assert "'data/nowhere.csv'" in msg and f"resolved to {tmp_path / 'data' / 'nowhere.csv'}" in msg


def test_the_dataset_is_named_after_its_file(tmp_path):
    from bench.config import DataConfig

    assert dataset_display_name(DataConfig(name="csv", path=str(tmp_path / "cohort_2024.csv"))) == "csv:cohort_2024"
    assert dataset_display_name(DataConfig(name="csv", path="digits.csv")) == "csv:digits"  # never the bundled digits
    assert dataset_display_name(DataConfig(name="breast_cancer")) == "breast_cancer"


def test_config_time_refusals():
    for data, needle in [
        ({"positive_labels": [3], "multiclass": True}, "data.multiclass"),
        ({"positive_labels": [True]}, "quote the label"),
        ({"positive_labels": [{"a": 1}]}, "data.positive_labels[0]"),
        ({"id_columns": ["grade"]}, "label column"),
        ({"drop_columns": ["hospital"]}, "site column"),
        ({"id_columns": ["x"], "drop_columns": ["x"]}, "one role"),
    ]:
        with pytest.raises(ConfigError) as exc:
            _cfg("/nonexistent.csv", **data)
        assert needle in str(exc.value), (data, str(exc.value))
    _cfg("/nonexistent.csv", partition="iid", drop_columns=["hospital"])  # under iid the site column is just a column


def test_run_key_follows_the_file(tmp_path):
    from bench.suite import build_suite

    path = tmp_path / "patients.csv"
    frame = _frame()
    _write(path, frame)
    data = {"name": "csv", "partition": "natural", "path": str(path), "site_column": "hospital", "label_column": "grade",
            "id_columns": ["patient_id"], "positive_labels": [4]}
    suite = {"suite": "fp", "base": {"data": data, "model": {"name": "logreg"}, "train": {"rounds": 1},
                                     "attacks": [{"name": "loss_threshold"}]}, "seeds": [0]}
    before = build_suite(suite).cells[0].run_key
    frame["income"] = frame["income"][::-1]
    _write(path, frame)
    os.utime(path, ns=(1, 1))  # even with an old timestamp: the digest is of the bytes
    after = build_suite(suite).cells[0].run_key
    assert before != after
    assert build_suite(suite).cells[0].run_key == after
