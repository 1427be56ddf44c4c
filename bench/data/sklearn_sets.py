"""Datasets bundled with scikit-learn (no download): ``breast_cancer`` and ``digits``."""

from __future__ import annotations

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError


def fingerprint(name: str) -> str:
    """The data's identity: scikit-learn ships it, so the package version names it
    (``sklearn-1.5.2:breast_cancer``); an upgrade that changed the files is a new cell."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("scikit-learn")
    except PackageNotFoundError:  # e.g. a source checkout without metadata
        import sklearn

        v = sklearn.__version__
    return f"sklearn-{v}:{name}"


def _no_natural_sites(name: str, cfg) -> None:
    from bench.data.sensitive import check_attributes

    check_attributes(name, None, cfg.fairness)  # no demographic columns: refuse fairness.attributes
    if cfg.data.partition == "natural":
        raise ConfigError(f"data.partition: {name!r} has no real hospitals; use iid or dirichlet")


def _register():
    from bench.registry import DATASETS

    @DATASETS.register("breast_cancer")
    class BreastCancer:
        """Wisconsin diagnostic breast cancer (569 records, 30 continuous features, 2 classes)."""

        modality = "tabular"

        @staticmethod
        def check(cfg) -> None:
            _no_natural_sites("breast_cancer", cfg)

        @staticmethod
        def fingerprint(cfg) -> str:
            return fingerprint("breast_cancer")

        @staticmethod
        def load(cfg) -> RawData:
            from sklearn.datasets import load_breast_cancer

            d = load_breast_cancer()
            cols = tuple(Column(str(n).replace(" ", "_"), "continuous") for n in d.feature_names)
            return RawData(
                name="breast_cancer",
                x=d.data.astype(np.float64),
                y=d.target.astype(np.int64),
                num_classes=2,
                columns=cols,
                class_names=tuple(map(str, d.target_names)),
            )

    @DATASETS.register("digits")
    class Digits:
        """UCI optical digits (1,797 greyscale 1x8x8 images, 10 classes), scaled to [0, 1]."""

        modality = "image"
        image_shape = (1, 8, 8)

        @staticmethod
        def check(cfg) -> None:
            _no_natural_sites("digits", cfg)

        @staticmethod
        def fingerprint(cfg) -> str:
            return fingerprint("digits")

        @staticmethod
        def load(cfg) -> RawData:
            from sklearn.datasets import load_digits

            d = load_digits()
            return RawData(
                name="digits",
                x=d.images.reshape(-1, 1, 8, 8).astype(np.float64),
                y=d.target.astype(np.int64),
                num_classes=10,
                image_shape=(1, 8, 8),
                class_names=tuple(str(i) for i in range(10)),
                image_scale=16.0,
            )


_register()
