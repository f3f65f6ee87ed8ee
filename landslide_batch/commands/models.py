"""``init-model`` and ``zoo``: make untrained model folders, list the registry."""

from __future__ import annotations

from ..models.card import init_model_folder
from ..models.registry import MODEL_ZOO


def register(sub) -> None:
    p = sub.add_parser("init-model", help="write an UNTRAINED model folder (smoke tests, benchmarks)",
                       description="Write a model folder with random weights; its card says untrained.")
    p.add_argument("--arch", required=True, help="Unet, DeepLabV3Plus or PlainUnet")
    p.add_argument("--encoder", default=None, help="smp encoder name, e.g. resnet34 (none for PlainUnet)")
    p.add_argument("--features", default=None, help="feature set (l4s14, rgb_ndvi_slope_dem); default: the zoo's")
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_init_model)

    z = sub.add_parser("zoo", help="list the model registry")
    z.set_defaults(func=_zoo)


def _init_model(args) -> int:
    card = init_model_folder(args.arch, args.encoder, args.out, seed=args.seed,
                             features=args.features, overwrite=args.overwrite)
    print(f"wrote untrained model {card.name} ({len(card.features)} input features) to {args.out}")
    return 0


def _zoo(args) -> int:
    for name, spec in MODEL_ZOO.items():
        print(f"{name:28s} {spec.arch:14s} {spec.encoder or '-':20s} {spec.features}")
    return 0
