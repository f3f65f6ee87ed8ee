"""Training commands (``train``, ``evaluate``, ``demo``), registered into ``landslide-batch`` through an entry point.

Heavy imports (torch, Ray) happen inside the command functions, so ``landslide-batch --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    """Add training's commands to the ``landslide-batch`` parser."""
    for add in (_add_train, _add_evaluate, _add_cut_patches, _add_reproduce, _add_demo):
        add(sub)


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a zoo model with Ray Train -> a model folder",
        description="Train one model from a training YAML (configs/train/*.yaml). Flags override "
        "the YAML. Re-running an interrupted run with the same config resumes it from "
        "its last checkpoint.",
    )
    t.add_argument("config", type=Path, help="training YAML")
    t.add_argument("--train-data", help="L4S training folder (img/ + mask/): a path or URI (s3://bucket/l4s/train)")
    t.add_argument("--val-data", help="L4S validation folder: a path or URI")
    t.add_argument(
        "--out",
        help="model folder to write: a path or URI (its checkpoints go next to it, "
        "in .train_runs/, unless the YAML sets run_dir)",
    )
    t.add_argument("--num-workers", type=int, help="Ray Train workers (DDP processes)")
    t.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    t.add_argument("--epochs", type=int)
    t.add_argument("--overwrite", action="store_true", help="replace an existing model folder and start afresh")
    t.set_defaults(func=_train)


def _add_evaluate(sub) -> None:
    e = sub.add_parser(
        "evaluate",
        help="precision / recall / F1 / IoU of models and their ensemble on labelled data",
        description="Pixel-wise scores of the landslide class over a whole L4S split, per model "
        "and for the ensemble, at the tuned thresholds; printed as Markdown, and "
        "saved as metrics.md + metrics.csv with --out.",
    )
    e.add_argument("--data", required=True, help="L4S folder with img/ + mask/: a path or URI (s3://...)")
    e.add_argument(
        "--model",
        dest="models",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="model folder (repeat; several make an equally weighted ensemble)",
    )
    e.add_argument("--ensemble", type=Path, help="ensemble YAML; its members are scored too")
    e.add_argument("--out", type=Path, help="folder for metrics.md, metrics.csv (and pr_curve.png)")
    e.add_argument("--pr-curve", action="store_true", help="also plot precision-recall curves (needs --out)")
    e.add_argument("--batch-size", type=int, default=16, help="patches per forward pass")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    e.add_argument(
        "--tta",
        action="store_true",
        help="also score each with test-time augmentation (8 flips/rotations): a row with and without",
    )
    e.set_defaults(func=_evaluate)


def _add_cut_patches(sub) -> None:
    c = sub.add_parser(
        "cut-patches",
        help="cut a scene + 0/1 label raster into an L4S-format training folder",
        description="Ingest a scene (anything `run` accepts) and cut it with its label raster "
        "(one band, 1 = landslide, same pixel grid) into img/image_N.h5 + mask/mask_N.h5.",
    )
    c.add_argument("scene", type=Path, help="scene: 14-band GeoTIFF, band folder, STAC item, Zarr or scene store")
    c.add_argument("labels", type=Path, help="0/1 label raster on the scene's grid")
    c.add_argument("--out", type=Path, required=True, help="split folder to create (e.g. data/mine/train)")
    c.add_argument("--size", type=int, default=128, help="patch size in pixels (default 128)")
    c.add_argument("--stride", type=int, help="patch spacing in pixels (default: --size, no overlap)")
    c.add_argument("--min-valid", type=float, default=0.5, help="skip patches with fewer valid pixels (fraction)")
    c.set_defaults(func=_cut_patches)


def _add_reproduce(sub) -> None:
    r = sub.add_parser(
        "reproduce",
        help="train the study's zoo with its settings, evaluate, write its Table 2",
        description="Train every configs/train/*.yaml with the reference study's settings on "
        "labelled Landslide4Sense data, score each model, their ensemble and (with "
        "--imported) the study's published models on the validation split, and write "
        "table.md + table.csv. --quick: 2 models, 1 epoch, CPU, the shared sample.",
    )
    r.add_argument("--data", type=Path, help="labelled L4S folder (fetch-data output: train/ [+ val/])")
    r.add_argument("--out", type=Path, required=True, help="folder for models/, table.md, table.csv")
    r.add_argument(
        "--imported", type=Path, help="folder of `import-model --all` output: add the published models' rows"
    )
    r.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME",
        help="only this config (repeat); default: all (--quick: unet_mobilenet_v2, unet_plain)",
    )
    r.add_argument("--quick", action="store_true", help="2 models, 1 epoch, CPU: the same path in minutes")
    r.add_argument("--use-gpu", action="store_true", help="train on GPUs")
    r.add_argument("--device", default="auto", help="evaluation device: auto, cpu or cuda[:N]")
    r.add_argument("--tta", action="store_true", help="also score each with test-time augmentation")
    r.set_defaults(func=_reproduce)


def _add_demo(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="offline end-to-end demo on synthetic data (a few minutes on a laptop CPU)",
        description="Train a small model on a synthetic scene with known landslides, map a "
        "second synthetic scene with the region pipeline, and score the map.",
    )
    d.add_argument("--out", type=Path, default=Path("demo-output"), help="demo folder (default ./demo-output)")
    d.set_defaults(func=_demo)


def _train(args) -> int:
    from .config import load_train_config
    from .train import train

    overrides = {
        "train_data": args.train_data,
        "val_data": args.val_data,
        "out": args.out,
        "num_workers": args.num_workers,
        "use_gpu": args.use_gpu,
        "epochs": args.epochs,
    }
    cfg = load_train_config(args.config, overrides)
    card = train(cfg, overwrite=args.overwrite)
    m = card.metrics
    print(
        f"wrote {cfg.out}: validation F1 {m['val_f1']:.3f}, precision {m['val_precision']:.3f}, "
        f"recall {m['val_recall']:.3f}, IoU {m['val_iou']:.3f} at threshold {card.threshold:.2f}"
    )
    return 0


def _evaluate(args) -> int:
    from landslide_batch.errors import ConfigError

    from .evaluate import evaluate, markdown_table, write_reports

    if args.pr_curve and args.out is None:
        raise ConfigError("--pr-curve writes pr_curve.png into --out; give --out DIR")
    evals = evaluate(
        args.data, args.models, args.ensemble, batch_size=args.batch_size, device=args.device, tta=args.tta
    )
    print(markdown_table([ev.row() for ev in evals]))
    if args.out is not None:
        for path in write_reports(evals, args.out, args.data, args.pr_curve):
            print(f"wrote {path}")
    return 0


def _cut_patches(args) -> int:
    from .patches import cut_scene

    n = cut_scene(args.scene, args.labels, args.out, size=args.size, stride=args.stride, min_valid=args.min_valid)
    print(f"wrote {n} patch(es) of {args.size} px to {args.out}")
    return 0


def _reproduce(args) -> int:
    from .reproduce import reproduce

    reproduce(
        args.out,
        args.data,
        quick=args.quick,
        imported=args.imported,
        models=args.models,
        use_gpu=args.use_gpu,
        device=args.device,
        tta=args.tta,
    )
    print((args.out / "table.md").read_text())
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out)
    return 0
