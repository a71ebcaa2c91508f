"""``python -m kdsearch.parity``: kdsearch's networks beside the authors' own code.

Given a local checkout of an author's repository (RD4AD: ``hq-deng/RD4AD``; MRKD:
``yuxin-jiang/MRKD``), the script builds the authors' encoder, bottleneck and decoder from
their ``resnet.py`` / ``de_resnet.py`` and kdsearch's model for the same backbone, copies
the authors' weights into kdsearch's, feeds both the same batch and prints the largest
absolute difference of every quantity: teacher features, bottleneck code, decoder (and
MRKD generation) outputs, the loss, every gradient, one Adam step and the loss after it,
and the anomaly map of the authors' ``test.py``. Nothing of the authors' code is copied
into kdsearch: it is imported from the checkout at run time.

Before the weights are copied, the freshly built networks' conv weight spreads are compared
too (kdsearch initialises as the authors' constructors do).

MRKD's decoder draws its feature masks inside its forward pass with another rule than
kdsearch's (a draw above 1 − λ is masked, where kdsearch masks a draw below λ: the same
distribution, other pixels for one seed), so the networks are compared with λ = 0 and the
masked share of each rule is printed beside them.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import CliParser, UserError, run_cli

METHODS = ("rd4ad", "mrkd")
BACKBONES = ("resnet18", "resnet50", "wide_resnet50_2")
# kdsearch's OCBE submodules and the authors' BN_layer parts they hold (the residual stage by order).
_BOTTLENECK = (("align.0.0.0", "conv1"), ("align.0.0.1", "bn1"), ("align.0.1.0", "conv2"), ("align.0.1.1", "bn2"),
               ("align.1.0.0", "conv3"), ("align.1.0.1", "bn3"), ("embed", "bn_layer"))


def _load(path: Path, name: str) -> ModuleType:
    file = path / f"{name}.py"
    if not file.is_file():
        raise UserError(f"{file} does not exist; --official must be a checkout of the authors' repository "
                        f"(it holds resnet.py and de_resnet.py)")
    sys.path.insert(0, str(path))  # their modules import each other by bare name
    try:
        spec = importlib.util.spec_from_file_location(f"official_{name}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code is the user's to see
        raise UserError(f"cannot import {file}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path))
    return module


def official_networks(path: Path, method: str, backbone: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The authors' (encoder, bottleneck, decoder), random-initialised as their constructors do."""
    resnet, de_resnet = _load(path, "resnet"), _load(path, "de_resnet")
    encoder, bottleneck = getattr(resnet, backbone)(pretrained=False)
    build = getattr(de_resnet, f"de_{backbone}")
    decoder = build("bottle", pretrained=False) if method == "mrkd" else build(pretrained=False)
    return encoder, bottleneck, decoder


def _copy_in_order(ours: nn.Module, theirs: nn.Module, where: str) -> None:
    mine, their = ours.state_dict(), list(theirs.state_dict().values())
    if len(mine) != len(their):
        raise UserError(f"{where}: kdsearch has {len(mine)} tensors, the authors' module {len(their)}")
    for (name, tensor), value in zip(mine.items(), their):
        if tensor.shape != value.shape:
            raise UserError(f"{where}.{name}: shape {tuple(tensor.shape)} against the authors' {tuple(value.shape)}")
        tensor.copy_(value)


@torch.no_grad()
def copy_official_weights(method: nn.Module, encoder: nn.Module, bottleneck: nn.Module, decoder: nn.Module) -> None:
    """Load the authors' weights into kdsearch's RD4AD/MRKD ``method`` (teacher by name, the rest by order)."""
    network = method.network
    theirs = encoder.state_dict()
    for name, tensor in network.teacher.encoder.state_dict().items():
        tensor.copy_(theirs[name])
    for ours, their in _BOTTLENECK:
        _copy_in_order(network.bottleneck.get_submodule(ours), bottleneck.get_submodule(their), f"bottleneck.{ours}")
    for index, stage in enumerate(network.decoder.stages):
        _copy_in_order(stage, decoder.get_submodule(f"layer{index + 1}"), f"decoder.stages.{index}")
    generators = getattr(method, "generators", None)
    if generators is not None:  # the authors number them deep to shallow
        for index, generator in enumerate(generators):
            _copy_in_order(generator.body, decoder.get_submodule(f"generation{len(generators) - index}"),
                           f"generators.{index}")


@contextlib.contextmanager
def _cuda_calls_stay_here() -> Iterator[None]:
    """MRKD's decoder calls ``.cuda()`` on its masks; without a GPU they stay on the CPU."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _flat_cosine_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """The authors' training loss, as their main.py writes it (1 − cos of flattened maps, batch mean)."""
    return sum(torch.mean(1 - F.cosine_similarity(t.view(t.shape[0], -1), s.view(s.shape[0], -1)))
               for t, s in zip(teacher, student))


def _largest(a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor]) -> float:
    if isinstance(a, torch.Tensor):
        a, b = [a], [b]
    return max(float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(a, b))


def compare(method_name: str, path: Path, backbone: str, image_size: int, batch: int, seed: int) -> list[tuple[str, float]]:
    """Every quantity's largest absolute difference between the authors' code and kdsearch."""
    from kdsearch.methods import create_method
    from kdsearch.settings import single_trial

    torch.manual_seed(seed)
    encoder, bottleneck, decoder = official_networks(path, method_name, backbone)
    trial = single_trial(method_name, None, {"backbone": backbone, "pretrained": "none", "image_size": image_size,
                                        "device": "cpu", "precision": "fp32",
                                        **({"mask_ratio": 0.0} if method_name == "mrkd" else {})})
    method = create_method(method_name, image_size, trial.method_config)
    out: list[tuple[str, float]] = [("init: largest |log(std ratio)| of trained convs, kdsearch/authors",
                                     _init_spread(_pair_parameters(method, bottleneck, decoder)))]
    copy_official_weights(method, encoder, bottleneck, decoder)
    if method_name == "mrkd":
        decoder.lambda_mgd = 0.0
    for module in (encoder, bottleneck, decoder, method):
        module.train()
    encoder.eval()
    method.network.teacher.eval()
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    network = method.network

    def theirs() -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        with _cuda_calls_stay_here():
            features = encoder(images)
            code = bottleneck(features)
            return features, code, decoder(code)

    def ours() -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        features = network.teacher(images)
        code = network.bottleneck(features)
        outputs = network.decoder(code)
        return features, code, method.restore(outputs) if method_name == "mrkd" else outputs

    their_features, their_code, their_outputs = theirs()
    our_features, our_code, our_outputs = ours()
    out += [("teacher features", _largest(their_features, our_features)), ("bottleneck code", _largest(their_code, our_code)),
            ("decoder outputs", _largest(their_outputs, our_outputs))]
    their_loss, our_loss = _flat_cosine_loss(their_features, their_outputs), _flat_cosine_loss(our_features, our_outputs)
    out.append(("loss", _largest(their_loss, our_loss)))

    their_params = [p for m in (bottleneck, decoder) for p in m.parameters()]
    our_params = [p for p in method.parameters() if p.requires_grad]
    their_loss.backward()
    our_loss.backward()
    paired = _pair_parameters(method, bottleneck, decoder)
    out.append(("gradients", max(_largest(a.grad, b.grad) for a, b in paired if a.grad is not None)))
    for params in (their_params, our_params):
        optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))
        optimizer.step()
    out.append(("parameters after one Adam step", max(_largest(a, b) for a, b in paired)))
    with torch.no_grad():
        their_features, _, their_outputs = theirs()
        our_features, _, our_outputs = ours()
    out.append(("loss after the step", _largest(_flat_cosine_loss(their_features, their_outputs),
                                                _flat_cosine_loss(our_features, our_outputs))))
    out.append(("anomaly map (their test.py's rule, float64 Gaussian)", _map_difference(method, encoder, bottleneck,
                                                                                         decoder, images)))
    if method_name == "mrkd":
        out += _mask_rules(seed)
    return out


def _pair_parameters(method: nn.Module, bottleneck: nn.Module, decoder: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(authors' parameter, kdsearch's) pairs, in the order weights were copied."""
    network = method.network
    pairs = []
    for ours, their in _BOTTLENECK:
        pairs += zip(bottleneck.get_submodule(their).parameters(), network.bottleneck.get_submodule(ours).parameters())
    for index, stage in enumerate(network.decoder.stages):
        pairs += zip(decoder.get_submodule(f"layer{index + 1}").parameters(), stage.parameters())
    generators = getattr(method, "generators", None)
    if generators is not None:
        for index, generator in enumerate(generators):
            pairs += zip(decoder.get_submodule(f"generation{len(generators) - index}").parameters(),
                         generator.body.parameters())
    return pairs


def _init_spread(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """How far kdsearch's fresh conv weights spread from the authors' fresh ones: the largest
    |log(std ours / std theirs)| over weights of at least 4,096 values (0.1 is about 10 %)."""
    ratios = [math.log(float(b.detach().std()) / float(a.detach().std())) for a, b in pairs
              if a.dim() == 4 and a.numel() >= 4096 and float(a.detach().std()) > 0]
    return max(abs(r) for r in ratios)


@torch.no_grad()
def _map_difference(method: nn.Module, encoder: nn.Module, bottleneck: nn.Module, decoder: nn.Module,
                    images: torch.Tensor) -> float:
    """The authors' map: Σ of per-level 1 − cos upsampled (bilinear, corners aligned), then
    scipy's Gaussian σ = 4 on float64, per image, against kdsearch's ``anomaly_map``."""
    from scipy.ndimage import gaussian_filter

    for module in (encoder, bottleneck, decoder, method):
        module.eval()
    size = images.shape[-1]
    with _cuda_calls_stay_here():
        features = encoder(images)
        outputs = decoder(bottleneck(features))
    summed = sum(F.interpolate((1 - F.cosine_similarity(s, t)).unsqueeze(1), size=size, mode="bilinear",
                               align_corners=True)[:, 0] for s, t in zip(outputs, features))
    theirs = torch.stack([torch.from_numpy(gaussian_filter(m.double().numpy(), sigma=4)) for m in summed])
    return _largest(theirs, method.anomaly_map(images))


def _mask_rules(seed: int, ratio: float = 0.2, draws: int = 1_000_000) -> list[tuple[str, float]]:
    """Masked share of MRKD's two spellings of λ = 0.2 over the same uniform draws."""
    uniform = torch.rand(draws, generator=torch.Generator().manual_seed(seed))
    theirs = float((uniform > 1 - ratio).float().mean())
    ours = float((uniform < ratio).float().mean())
    return [("masked share at lambda 0.2, authors' rule", theirs), ("masked share at lambda 0.2, kdsearch's rule", ours)]


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m kdsearch.parity",
        description="Compare kdsearch's RD4AD or MRKD with the authors' code (a local checkout of their "
                    "repository): same weights, same batch, the largest difference of every quantity.",
        epilog="Example: python -m kdsearch.parity --method rd4ad --official ~/src/RD4AD")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--official", required=True, type=Path, help="checkout of the authors' repository")
    parser.add_argument("--backbone", default="wide_resnet50_2", choices=BACKBONES,
                        help="MRKD's code fixes its generation modules to WRN50's widths: use wide_resnet50_2 there")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.official.is_dir():
        raise UserError(f"--official {args.official} is not a folder; pass a checkout of the authors' repository")
    if args.image_size % 32 or args.image_size < 64 or args.batch < 1:
        raise UserError(f"--image-size must be a multiple of 32 (>= 64) and --batch >= 1, got {args.image_size}, "
                        f"{args.batch}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = compare(args.method, args.official, args.backbone, args.image_size, args.batch, args.seed)
    print(f"{args.method} ({args.backbone}, {args.batch} x {args.image_size}², fp32, CPU) against {args.official}:")
    for name, value in rows:
        if name.startswith(("masked share", "init")):
            print(f"  {name:<66} {value:.4f}")
            continue
        verdict = "bit-identical" if value == 0 else ("within 1e-6" if value <= 1e-6 else "differs")
        print(f"  {name:<66} {value:.3g}  {verdict}" if not math.isnan(value) else f"  {name:<66} n/a")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
