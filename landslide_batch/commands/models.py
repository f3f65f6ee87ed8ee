"""``init-model``, ``import-model`` and ``zoo``: make untrained model folders, import the study's
published checkpoints, list the registry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ConfigError, ModelError
from ..models.card import init_model_folder, read_card
from ..models.registry import MODEL_ZOO


def register(sub) -> None:
    p = sub.add_parser(
        "init-model",
        help="write an UNTRAINED model folder (smoke tests, benchmarks)",
        description="Write a model folder with random weights; its card says untrained.",
    )
    p.add_argument("--arch", required=True, help="Unet, DeepLabV3Plus or PlainUnet")
    p.add_argument("--encoder", default=None, help="smp encoder name, e.g. resnet34 (none for PlainUnet)")
    p.add_argument("--features", default=None, help="feature set (l4s14, rgb_ndvi_slope_dem); default: the zoo's")
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_init_model)

    i = sub.add_parser(
        "import-model",
        help="import the reference study's published checkpoint(s) as model folders",
        description="Turn one of the study's checkpoints (a local file or a URL) into a model "
        "folder, loaded strictly (a key that does not fit is an error); or, with --all, "
        "download and import all 13 into --out with an ensemble YAML. Downloads resume "
        "and are verified.",
    )
    i.add_argument(
        "name",
        nargs="?",
        help="the study's model name (its file name): resnet34, vgg16, mitb1, segformer, deeplabv3, ...",
    )
    i.add_argument("checkpoint", nargs="?", help="checkpoint file or http(s) URL")
    i.add_argument("--out", type=Path, required=True, help="model folder (with --all: folder of model folders)")
    i.add_argument("--all", action="store_true", help="import every published model from --base-url")
    i.add_argument(
        "--base-url",
        default=None,
        help="where the study's files are (default: its Hugging Face "
        "repository); with a NAME and no CHECKPOINT, NAME's file there",
    )
    i.add_argument(
        "--hub",
        metavar="REPO_ID",
        help="download from this Hugging Face model repository (the study's: harshinde/Sims; its files "
        "under models/) through huggingface_hub and its cache; HF_ENDPOINT names a mirror",
    )
    i.add_argument("--revision", default="main", help="with --hub: the branch, tag or commit (default main)")
    i.add_argument("--skip", action="append", default=[], metavar="NAME", help="with --all: leave NAME out (repeat)")
    i.add_argument("--sha256", help="expected sha256 of the checkpoint file")
    i.add_argument("--cache", type=Path, help="keep downloads here (resumable across runs); default: a temp dir")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(func=_import_model)

    z = sub.add_parser("zoo", help="list the model registry")
    z.set_defaults(func=_zoo)


def _init_model(args) -> int:
    card = init_model_folder(
        args.arch, args.encoder, args.out, seed=args.seed, features=args.features, overwrite=args.overwrite
    )
    print(f"wrote untrained model {card.name} ({len(card.features)} input features) to {args.out}")
    return 0


def _zoo(args) -> int:
    for name, spec in MODEL_ZOO.items():
        print(f"{name:28s} {spec.arch:14s} {spec.encoder or '-':20s} {spec.features}")
    return 0


def _import_model(args) -> int:
    from ..models.study import STUDY_BASE_URL, STUDY_MODELS, ensemble_yaml, import_model, study_url

    base = args.base_url or STUDY_BASE_URL
    if args.all:
        if args.name or args.checkpoint or args.sha256:
            raise ConfigError("--all imports every model from --base-url; give no NAME, CHECKPOINT or --sha256")
        if unknown := sorted(set(args.skip) - set(STUDY_MODELS)):
            raise ConfigError(f"--skip {unknown}: not study models; expected names from {sorted(STUDY_MODELS)}")
        names = [n for n in STUDY_MODELS if n not in args.skip]
        if "segformer" in names and importlib.util.find_spec("transformers") is None:
            raise ConfigError(
                "the study's segformer needs the 'transformers' package, which is not installed; "
                "install it, or leave the model out with --skip segformer"
            )
        for name in names:
            folder = args.out / STUDY_MODELS[name].folder
            if not args.overwrite and _imported(folder, name):
                print(f"{name}: already imported in {folder}")
                continue
            if args.hub:
                _from_hub(args, name, folder)
            else:
                import_model(name, study_url(base, name), folder, cache=args.cache, overwrite=args.overwrite)
            print(f"imported {name} -> {folder}")
        ens = args.out / "ensemble.yaml"
        ens.write_text(ensemble_yaml(names))
        print(f"wrote {ens} ({len(names)} members)")
        return 0
    if not args.name:
        raise ConfigError("give the study model's NAME and a CHECKPOINT file or URL, or --all")
    if args.hub and (args.checkpoint or args.base_url):
        raise ConfigError("--hub downloads NAME's checkpoint from the repository; give no CHECKPOINT or --base-url")
    if args.hub:
        card = _from_hub(args, args.name, args.out)
        print(f"imported {args.name} ({card.arch}/{card.encoder}) from {card.source['url']} -> {args.out}")
        return 0
    location = args.checkpoint or study_url(base, args.name)
    card = import_model(args.name, location, args.out, sha256=args.sha256, cache=args.cache, overwrite=args.overwrite)
    print(
        f"imported {args.name} ({card.arch}/{card.encoder}) from {location} -> {args.out} "
        f"(sha256 {card.source['sha256'][:12]}…)"
    )
    return 0


def _from_hub(args, name: str, out: Path):
    """``name``'s checkpoint from the ``--hub`` repository (checked against ``--sha256`` when
    given; the hub's download checks the file against its ETag) -> the imported model's card."""
    from ..download import file_digest
    from ..models.hub import STUDY_FOLDER, hub_file
    from ..models.study import import_checkpoint, study_model

    path, url = hub_file(args.hub, f"{STUDY_FOLDER}/{study_model(name).file}", args.revision, args.cache)
    if args.sha256 and (got := file_digest(path, "sha256")) != args.sha256.lower():
        raise ModelError(f"{url}: sha256 {got} does not match the expected {args.sha256}")
    return import_checkpoint(name, path, out, source=url, overwrite=args.overwrite)


def _imported(folder: Path, name: str) -> bool:
    """``folder`` holds the study's ``name`` already (a rerun of ``--all`` after an interruption)."""
    try:
        return read_card(folder).source.get("model") == name
    except ModelError:
        return False
