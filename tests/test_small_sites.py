"""Tiny hospitals are a choice (issue 23, item 4): one error lists every too-small hospital with its
size and the minimum; ``data.small_sites: drop | merge`` leaves them out or pools them, and
``validate --data`` says so. Integer site codes stored as floats read as integers, sorted numerically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.config import parse_experiment
from bench.data import MERGED_SITE, build_federation, min_site_records, small_site_report
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import ConfigError
from conftest import tiny_raw


def _csv(path: Path, sizes: dict) -> str:
    """A CSV with hospitals of the given sizes; site codes 1, 2, 11 ... with one gap so pandas reads them as floats."""
    rng = np.random.default_rng(0)
    site = np.concatenate([np.full(n, float(s)) for s, n in sizes.items()])
    n = len(site)
    frame = pd.DataFrame({"hospital": site, "age": rng.integers(30, 80, n), "bp": rng.normal(120, 15, n), "label": np.arange(n) % 2})
    frame.loc[0, "bp"] = np.nan  # a gap elsewhere: still read
    frame.to_csv(path, index=False)
    return str(path)


SIZES = {1: 60, 2: 2, 11: 60, 3: 3}


def _raw(path, **data):
    return tiny_raw(data={"name": "csv", "partition": "natural", "path": path, "site_column": "hospital", "label_column": "label", **data})


def test_one_error_lists_every_tiny_hospital_with_its_size_and_the_minimum(tmp_path):
    path = _csv(tmp_path / "p.csv", SIZES)
    cfg = parse_experiment(_raw(path))
    with pytest.raises(ConfigError) as exc:
        build_federation(cfg.data, Seeds(0))
    msg = str(exc.value)
    need = min_site_records(cfg.data)
    assert "\n" not in msg and "2 hospital(s)" in msg and "2 (2)" in msg and "3 (3)" in msg
    assert f"at least {need}" in msg and "data.small_sites" in msg
    assert "data.num_sites" not in msg  # there is no such key under partition: natural


def test_min_site_records_is_the_smallest_size_that_splits():
    cfg = parse_experiment(tiny_raw()).data  # test 0.2, members 0.5
    need = min_site_records(cfg)
    # known answer: n=4 -> 1 test (round 0.8), 2 members (round(1.5) = 2), 1 non-member;
    # n=3 -> 1 test, 1 member (round(1.0)): too few
    assert need == 4


def test_drop_and_merge_and_numeric_site_codes(tmp_path):
    path = _csv(tmp_path / "p.csv", SIZES)
    dropped, _ = build_federation(parse_experiment(_raw(path, small_sites="drop")).data, Seeds(0))
    assert dropped.site_names == ("1", "11")  # integers, not "1.0"; 11 after 1 numerically, tiny ones gone
    merged, _ = build_federation(parse_experiment(_raw(path, small_sites="merge", min_site_records=5)).data, Seeds(0))
    assert merged.site_names == ("1", "11", MERGED_SITE)
    s = merged.sites[-1]
    assert len(s.train) + len(s.test) <= 5  # the pooled 2 + 3 records (some are non-members)
    line = small_site_report(parse_experiment(_raw(path, small_sites="drop")).data, 0)
    assert line.startswith("data.small_sites: drop: 2 hospital(s) below") and "2 (2), 3 (3)" in line


def test_validate_data_reports_the_policy(tmp_path, capsys):
    path = _csv(tmp_path / "p.csv", SIZES)
    suite = tmp_path / "s.yaml"
    import yaml

    raw = _raw(path, small_sites="drop")
    raw.pop("seed")
    suite.write_text(yaml.safe_dump({"suite": "tiny", "base": raw, "seeds": [0]}), encoding="utf-8")
    assert main(["validate", str(suite), "--data"]) == 0
    assert "left out: 2 (2), 3 (3)" in capsys.readouterr().out


def test_worst_site_only_from_hospitals_that_pass_min_count(tmp_path):
    # 3 and 4 test records at the two small hospitals (kept by merge's threshold 1): below min_count 10
    path = _csv(tmp_path / "p.csv", {1: 60, 2: 16, 11: 60, 3: 18})
    raw = _raw(path, small_sites="merge", min_site_records=1)
    raw["fairness"] = {"min_count": 10}
    res = run_in_memory(parse_experiment(raw))
    m = res.metrics
    small = [s for s in ("2", "3") if m[f"utility/site/{s}/count"] < 10]
    assert small and all(f"utility/site/{s}/accuracy" not in m for s in small)
    assert m["utility/sites_below_min_count"] == len(small)
    passing = [m[f"utility/site/{s}/accuracy"] for s in ("1", "11", "2", "3") if f"utility/site/{s}/accuracy" in m]
    assert m["utility/worst_site_accuracy"] == pytest.approx(min(passing))
