"""``privbench run --executor ray``: cells as Ray tasks on a local Ray instance, one writer."""

from __future__ import annotations

import pytest
import yaml

from bench.cli import main
from conftest import tiny_raw

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'privbench[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _histories(uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("raysuite")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'cell'")
    out = {}
    for r in runs:
        assert r.info.status == "FINISHED"
        out[r.data.tags["run_key"]] = {
            k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
            for k in r.data.metrics
            if "seconds" not in k
        }
    return out


@pytest.mark.slow
def test_a_suite_through_ray_logs_the_same_runs_as_in_process(tmp_path, local_ray):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"suite": "raysuite", "base": tiny_raw(), "grid": {"defenses": [[], [{"name": "clipping", "max_norm": 0.5}]]}, "seeds": [0]}))
    uri_ray, uri_here = f"sqlite:///{tmp_path / 'ray.db'}", f"sqlite:///{tmp_path / 'here.db'}"
    assert main(["run", str(path), "--tracking-uri", uri_ray, "-q", "--executor", "ray"]) == 0
    assert main(["run", str(path), "--tracking-uri", uri_here, "-q"]) == 0
    via_ray, here = _histories(uri_ray), _histories(uri_here)
    assert len(via_ray) == 2 and via_ray == here
    # resume works the same through Ray: nothing left to run
    assert main(["run", str(path), "--tracking-uri", uri_ray, "-q", "--executor", "ray"]) == 0
    assert len(_histories(uri_ray)) == 2
    assert ray.is_initialized()  # privbench leaves a Ray instance it did not start running
