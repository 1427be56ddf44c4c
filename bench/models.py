"""Models (one registry) and flat-parameter helpers.

All models avoid BatchNorm (CNN uses GroupNorm) so that DP-SGD's per-sample gradients
are well defined.
"""

from __future__ import annotations

from bench.registry import MODELS, Registry  # noqa: F401  (the registry is a leaf of bench)
from bench.types import ConfigError, DatasetInfo, InputLayer
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())


def flatten(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one new flat float32 tensor (a copy)."""
    return torch.nn.utils.parameters_to_vector([p.detach() for p in model.parameters()]).clone()


def load_flat(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy ``flat`` into the model's parameters in place and return the model."""
    # copy_ (not vector_to_parameters, which aliases ``flat``): training must never write
    # into the caller's vector
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
    if offset != flat.numel():
        raise ValueError(f"parameter vector has {flat.numel()} values; the model has {offset}")
    return model


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@MODELS.register("logreg")
class LogisticRegression:
    """Multinomial logistic regression (one linear layer with bias)."""

    @staticmethod
    def check(cfg) -> None:
        return None

    @staticmethod
    def build(info: DatasetInfo, cfg) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(info.num_inputs, info.num_classes))

    @staticmethod
    def input_layer(info: DatasetInfo, cfg) -> InputLayer:
        """The first layer :meth:`build` makes, without torch: ``Linear`` on the whole record."""
        return InputLayer("1", "Linear", info.num_inputs, bias=True)


@MODELS.register("mlp")
class MLP:
    """Fully connected network, ``model.hidden`` units per layer, ReLU."""

    @staticmethod
    def check(cfg) -> None:
        if not cfg.model.hidden or any(h < 1 for h in cfg.model.hidden):
            raise ConfigError(f"model.hidden: got {list(cfg.model.hidden)}; expected a list of positive layer widths, e.g. [32]")

    @staticmethod
    def build(info: DatasetInfo, cfg) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = info.num_inputs
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, info.num_classes))
        return nn.Sequential(*layers)

    @staticmethod
    def input_layer(info: DatasetInfo, cfg) -> InputLayer:
        """The first layer :meth:`build` makes, without torch: ``Linear`` on the whole record."""
        return InputLayer("1", "Linear", info.num_inputs, bias=True)


@MODELS.register("cnn")
class SmallCNN:
    """Two 3x3 convolutions with GroupNorm and ReLU, global average pooling, a linear head.

    For images only (``digits``).
    """

    @staticmethod
    def check(cfg) -> None:
        from bench.registry import DATASETS

        if getattr(DATASETS.get(cfg.data.name), "modality", "tabular") != "image":
            raise ConfigError(f"model.name: 'cnn' needs image data, but {cfg.data.name!r} is tabular; use logreg or mlp")

    @staticmethod
    def build(info: DatasetInfo, cfg) -> nn.Module:
        c = cfg.channels
        groups = 2 if c % 2 == 0 else 1
        return nn.Sequential(
            nn.Conv2d(info.input_shape[0], c, 3, padding=1),
            nn.GroupNorm(groups, c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.GroupNorm(groups, 2 * c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * c, info.num_classes),
        )

    @staticmethod
    def input_layer(info: DatasetInfo, cfg) -> InputLayer:
        """The first layer :meth:`build` makes, without torch: a ``Conv2d`` with bias."""
        return InputLayer("0", "Conv2d", None, bias=True)


def build_model(info: DatasetInfo, cfg, generator: torch.Generator) -> nn.Module:
    """Build ``cfg.name`` with initial weights drawn from ``generator`` (no global seeding)."""
    model = MODELS.get(cfg.name).build(info, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                bound = (1.0 / fan_in) ** 0.5
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=generator))
            else:
                p.zero_()
    # GroupNorm weights must start at 1
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
