"""The threat matrix: adversaries read from the attacks themselves, strongest attack by its
interval's lower end, ε per adversary, and the suite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks import ATTACKS
from bench.accounting import ADVERSARIES
from bench.report.threats import attack_adversary, matrix_figure, matrix_markdown, threat_matrix, verdicts

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_attack_names_an_adversary():
    for name in ATTACKS.names():
        assert attack_adversary(name) in ADVERSARIES, name
    assert attack_adversary("peer_fedmia") == "peer"
    assert attack_adversary("loss_threshold") == "outsider"
    assert attack_adversary("source_inference") == "server"
    assert attack_adversary("no_such_attack") is None


def _cell(row, seed, metrics, tags=None):
    return {"row": row, "seed": seed, "metrics": metrics, "tags": {"dp": "false", **(tags or {})}}


def test_strongest_attack_is_the_highest_lower_end_and_epsilon_follows_the_adversary():
    cells = []
    for s, (a, b) in enumerate([(0.60, 0.70), (0.62, 0.52), (0.61, 0.88)]):
        # lira's mean is higher but its spread over seeds is wide: loss_threshold's lower end is higher
        cells.append(_cell("client_dp", s, {"attack/loss_threshold/auc": a, "attack/lira/auc": b,
                                            "attack/peer_fedmia/auc": 0.5,
                                            "privacy/against/outsider/client/epsilon": 10.0 + s,
                                            "privacy/against/outsider/client/delta": 1e-5,
                                            "privacy/against/peer/client/epsilon": 12.0,
                                            "privacy/against/peer/client/delta": 1e-5},
                           {"dp": "true", "privacy/against/server/client": "none",
                            "privacy/against/malicious_server/client": "none"}))
    m = threat_matrix(cells)["client_dp"]
    assert m["outsider"].attack == "loss_threshold"
    assert m["outsider"].estimate.mean == pytest.approx(0.61)
    assert m["outsider"].epsilon == pytest.approx(11.0)
    assert m["server"].attack is None and m["server"].epsilon_text.startswith("none")
    assert m["peer"].attack == "peer_fedmia" and m["peer"].epsilon == pytest.approx(12.0)
    lines = verdicts({"client_dp": m})
    assert any("outsider" in v and "loss_threshold" in v for v in lines)
    assert not any("peer hospital: `peer_fedmia`" in v for v in lines)  # AUC exactly 0.5: no better than chance
    assert any("does not hold" in v and "server" in v for v in lines)


def test_markdown_and_figure(tmp_path):
    cells = [_cell("", s, {"attack/loss_threshold/auc": 0.55 + 0.01 * s, "attack/imprint/recovered_fraction": 0.4})
             for s in range(3)]
    m = threat_matrix(cells)
    assert m[""]["malicious_server"].attack == "imprint"
    text = matrix_markdown(m)
    assert "no attack applies" in text and "imprint" in text and "no DP" in text
    assert matrix_figure(m, tmp_path / "t.png").stat().st_size > 1000


def test_threats_suite_is_valid_and_covers_the_rows_with_three_seeds():
    from bench.suite import load_suite

    suite = load_suite(str(ROOT / "experiments" / "threats.yaml"))
    cells = [c.config for c in suite.cells]
    assert len({c.seed for c in cells}) >= 3
    names = {s.name for c in cells for s in c.defenses}
    assert {"secure_aggregation", "client_dp", "distributed_dp", "dp_sgd"} <= names
    advs = {attack_adversary(a.name) for c in cells for a in c.attacks}
    assert set(ADVERSARIES) <= advs


def test_image_inversion_is_the_servers_attack_and_own_baselines_are_the_blind_guess():
    """An image inversion's SSIM is the server's headline (it was 'no attack applies'); an attack
    that logs its own blind guess (``chance``, ``baseline_<metric>``) is measured against it."""
    from bench.report.threats import threat_matrix

    cells = [
        {"row": "none", "seed": s, "tags": {"dp": "false"},
         "metrics": {"attack/inverting_gradients/ssim": v, "attack/source_inference/accuracy": 0.30 + s / 100,
                     "attack/source_inference/chance": 0.25}}
        for s, v in enumerate([0.70, 0.80, 0.75])
    ]
    m = threat_matrix(cells)["none"]["server"]
    assert m.attack == "inverting_gradients" and m.metric == "ssim" and m.chance is None
    only_source = [{**c, "metrics": {k: v for k, v in c["metrics"].items() if "source" in k}} for c in cells]
    m = threat_matrix(only_source)["none"]["server"]
    assert m.attack == "source_inference" and m.chance == 0.25
