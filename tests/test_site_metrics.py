"""Per-hospital utility is counted: count always, accuracy with its interval only from min_count records;
attack-only cells log no utility/ metric."""

from __future__ import annotations

import numpy as np
import pytest

from bench.config import parse_experiment
from bench.data import build_federation
from bench.metrics import predict_proba, utility_metrics
from bench.metrics.membership import clopper_pearson
from bench.models import build_model, flatten
from bench.runner import run_in_memory
from bench.seeding import Seeds
from conftest import tiny_raw


@pytest.fixture(scope="module")
def fed_model():
    cfg = parse_experiment(tiny_raw(data__num_sites=4))
    fed, _ = build_federation(cfg.data, Seeds(0))
    model = build_model(fed.info, cfg.model, Seeds(0).torch("init"))
    return fed, model


def test_sites_below_min_count_get_a_count_and_no_accuracy(fed_model):
    fed, model = fed_model
    counts = sorted(len(s.test) for s in fed.sites)
    assert counts[0] < counts[-1] or len(set(counts)) == 1
    cut = counts[-1]  # only the largest hospitals pass
    out = utility_metrics(model, flatten(model), fed, min_count=cut)
    proba = predict_proba(model, fed.test.x)
    y = fed.test.y.numpy()
    offset, passing = 0, []
    for s in fed.sites:
        n = len(s.test)
        right = int((proba[offset : offset + n].argmax(1) == y[offset : offset + n]).sum())
        offset += n
        assert out[f"utility/site/{s.name}/count"] == n
        if n < cut:
            assert f"utility/site/{s.name}/accuracy" not in out and out[f"utility/site/{s.name}/too_few"] == 1.0
        else:
            passing.append(right / n)
            assert out[f"utility/site/{s.name}/accuracy"] == pytest.approx(right / n)
            assert (out[f"utility/site/{s.name}/accuracy_ci_low"], out[f"utility/site/{s.name}/accuracy_ci_high"]) == pytest.approx(clopper_pearson(right, n))
    # the worst hospital is chosen among the hospitals that pass only
    assert out["utility/worst_site_accuracy"] == pytest.approx(min(passing))
    assert out["utility/sites_below_min_count"] == sum(c < cut for c in counts)


def test_no_hospital_passing_means_no_worst_site_number(fed_model):
    fed, model = fed_model
    out = utility_metrics(model, flatten(model), fed, min_count=10_000)
    assert "utility/worst_site_accuracy" not in out and "utility/site_accuracy_gap" not in out
    assert out["utility/sites_below_min_count"] == len(fed.sites)
    assert np.isfinite(out["utility/test_accuracy"])  # the global number is still there


def test_min_count_comes_from_the_fairness_config():
    res = run_in_memory(parse_experiment(tiny_raw(fairness={"min_count": 10_000})))
    assert "utility/worst_site_accuracy" not in res.metrics and res.metrics["utility/sites_below_min_count"] == 3


def test_attack_only_cell_logs_its_accuracy_under_a_name_that_says_so():
    raw = tiny_raw(data__members_per_site=1, train__rounds=1, train__batch_size=1, model={"name": "mlp", "hidden": [8]},
                   attacks=[{"name": "analytic"}])
    res = run_in_memory(parse_experiment(raw))
    assert res.tags["cell_kind"] == "attack_only"
    assert not any(k.startswith("utility/") for k in res.metrics)
    assert 0.0 <= res.metrics["attack_only/test_accuracy"] <= 1.0
    # a membership cell is a utility result as before
    res = run_in_memory(parse_experiment(tiny_raw()))
    assert "cell_kind" not in res.tags and "utility/test_accuracy" in res.metrics
