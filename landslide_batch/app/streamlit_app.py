"""Streamlit page: try model folders on one uploaded patch, or browse a finished region run.

Started by ``landslide-batch app`` (which passes ``--models-dir`` / ``--runs-dir`` on as the
``LANDSLIDE_BATCH_MODELS`` / ``LANDSLIDE_BATCH_RUNS`` environment variables); the page offers
only what lies in those folders and takes no server path from its user. The page only
lays things out; what it computes lives in the app's other modules (uploads, model folders,
inference, pictures, downloads, run folders, the run map). Uploads work in ``AppTest`` too
(``at.file_uploader(key="patch").upload(name, bytes)``), so the page needs no test hook.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from landslide_batch.app import (
    MODELS_ENV,
    downloads,
    inference,
    map_scale,
    model_folders,
    pictures,
    run_folders,
    runs_view,
    uploads,
)
from landslide_batch.errors import LandslideBatchError, UnitsMismatchError
from landslide_batch.infer.predictor import EnsemblePredictor
from landslide_batch.metrics import confusion_counts, scores
from landslide_batch.outputs.manifest import REGION_JOB, job_kind

#: Models shown next to each other per row in all-models mode.
COLUMNS = 4
SCORES = {"precision": "Precision", "recall": "Recall", "f1": "F1", "iou": "IoU"}
ACCEPT_UNITS = "Map it anyway: accept a units mismatch (as --accept-units-mismatch)"


@st.cache_resource(show_spinner=False, max_entries=16)
def _predictor(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...], tta: bool = False) -> EnsemblePredictor:
    """Models load once per server; ``stamps`` (file times) reload a folder that changed."""
    return inference.load_predictor(*map(Path, paths), tta=tta)


def _predict(models: list[model_folders.ModelEntry], patch: uploads.Patch, tta: bool) -> inference.Prediction:
    """The models' ensemble (one model: itself) on the patch, as ``run --model ...`` maps it."""
    predictor = _predictor(tuple(str(m.path) for m in models), tuple(m.stamp for m in models), tta)
    return inference.predict(predictor, models, patch)


def _card(where, model: model_folders.ModelEntry) -> None:
    card = model.card
    if not card.trained:
        where.error("UNTRAINED: random weights, predictions are meaningless")
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in card.metrics.items()) or "none recorded"
    where.markdown(
        f"**{card.name}**  \n"
        f"Architecture: `{card.arch}`  \nEncoder: `{card.encoder or '—'}`  \n"
        f"Input features: {', '.join(card.features)}  \nThreshold: {card.threshold:.2f}  \n"
        f"Validation metrics: {metrics}"
    )


def _choose_models() -> tuple[list[model_folders.ModelEntry], bool]:
    """Sidebar: models folder, one model or all, and their cards."""
    sb = st.sidebar
    folder = model_folders.default_models_dir()  # fixed by the server: the page never takes a server path
    sb.caption(f"Models folder: `{folder.name or folder}` (set by `--models-dir`)")
    models, problems = model_folders.find_models(folder)
    for problem in problems:
        sb.warning(problem)
    if not models:
        st.warning(
            f"No model folders (card.json + weights.pt) under {folder}. Start the app with "
            f"`landslide-batch app --models-dir DIR` or set {MODELS_ENV}."
        )
        return [], False
    run_all = sb.checkbox(f"Run all models ({len(models)})", key="run_all")
    if run_all:
        for m in models:
            _card(sb.expander(m.label, expanded=not m.card.trained), m)
        return models, True
    i = sb.selectbox("Model", range(len(models)), format_func=lambda k: models[k].label, key="model")
    _card(sb, models[i])
    return [models[i]], False


def _downloads(where, pred: inference.Prediction, patch: uploads.Patch) -> None:
    stem = f"{Path(patch.name).stem}_{pred.stem}"
    mask = pred.mask.astype(np.uint8)
    files = [
        ("probability .npy", f"{stem}_probability.npy", downloads.npy_bytes(pred.probability)),
        ("mask .npy", f"{stem}_mask.npy", downloads.npy_bytes(mask)),
    ]
    if patch.georeferenced:
        files += [
            (
                "probability .tif",
                f"{stem}_probability.tif",
                downloads.geotiff_bytes(pred.probability, patch, nodata=float("nan")),
            ),
            ("mask .tif", f"{stem}_mask.tif", downloads.geotiff_bytes(mask, patch)),
        ]
    for label, name, data in files:
        where.download_button(
            label, data, file_name=name, mime="application/octet-stream", on_click="ignore", key=f"dl-{name}"
        )


def _show(patch: uploads.Patch, preds: list[inference.Prediction], truth: np.ndarray | None, rgb: np.ndarray) -> None:
    inputs = [(rgb, "RGB (B4, B3, B2)")]
    if truth is not None:
        inputs.append((pictures.overlay(rgb, truth, colour=pictures.TRUTH), "Ground truth (cyan) on RGB"))

    def panels(pred: inference.Prediction) -> list[tuple[np.ndarray, str]]:
        return [
            (pred.mask.astype(np.uint8) * 255, f"Mask (threshold {pred.threshold:.2f})"),
            (pictures.overlay(rgb, pred.mask), "Overlay on RGB"),
            (pictures.probability_image(pred.probability), "Probability (viridis, 0 → 1)"),
        ]

    rows = []
    if truth is not None:
        for pred in preds:
            c = confusion_counts(pred.mask, truth, patch.valid)
            rows.append(
                {
                    "model": pred.label,
                    **{k: round(v, 4) for k, v in scores(c).items()},
                    "tp": c.tp,
                    "fp": c.fp,
                    "fn": c.fn,
                }
            )
    if len(preds) == 1:
        pred = preds[0]
        st.subheader(pred.label + ("" if pred.trained else " — UNTRAINED"))
        shown = [*inputs, *panels(pred)]
        for col, (img, caption) in zip(st.columns(len(shown)), shown):
            col.image(pictures.enlarge(img), caption=caption, width="stretch")
        if rows:
            for col, (key, label) in zip(st.columns(4), SCORES.items()):
                col.metric(label, f"{rows[0][key]:.3f}")
        _downloads(st.container(horizontal=True), pred, patch)
        return
    for col, (img, caption) in zip(st.columns(COLUMNS), inputs):
        col.image(pictures.enlarge(img), caption=caption, width="stretch")
    if rows:
        st.dataframe(rows, hide_index=True)
    for start in range(0, len(preds), COLUMNS):
        for col, pred in zip(st.columns(COLUMNS), preds[start : start + COLUMNS]):
            col.markdown(f"**{pred.label}**" + ("" if pred.trained else "  \n:red[UNTRAINED]"))
            for img, caption in panels(pred):
                col.image(pictures.enlarge(img), caption=caption, width="stretch")
            _downloads(col, pred, patch)


def patch_mode() -> None:
    st.header("Try models on a patch")
    models, run_all = _choose_models()
    if not models:
        return
    upload = st.file_uploader(
        "Patch: L4S image_N.h5 or a small 14-band GeoTIFF", type=["h5", "hdf5", "tif", "tiff"], key="patch"
    )
    truth_upload = st.file_uploader(
        "Ground truth (optional): L4S mask_N.h5 or a 1-band GeoTIFF", type=["h5", "hdf5", "tif", "tiff"], key="truth"
    )
    if upload is None:
        st.info("Upload a patch to map it.")
        return
    try:
        for f in (upload, truth_upload):
            if f is not None:
                uploads.check_upload_size(f.name, f.size)
        patch = uploads.load_patch(upload.name, upload.getvalue())
        truth = (
            uploads.load_mask(truth_upload.name, truth_upload.getvalue(), patch.valid.shape)
            if truth_upload is not None
            else None
        )
    except LandslideBatchError as exc:
        st.error(str(exc))
        return
    h, w = patch.valid.shape
    st.caption(
        f"{patch.name}: {h} x {w} px, {patch.valid.mean():.0%} valid"
        + (", georeferenced" if patch.georeferenced else "")
    )
    # Predictions live in the session so reruns (other widgets) show them without recomputing.
    tta = st.checkbox("Test-time augmentation: average the 8 flips and rotations (8x the work)", key="tta")
    accept = st.checkbox(ACCEPT_UNITS, key="accept_units")
    key = (upload.file_id, tuple(str(m.path) for m in models), tta, accept)
    if st.button("Run all models" if run_all else f"Run {models[0].label}", type="primary"):
        try:
            with st.spinner("Running…"):
                warnings = inference.units_warnings(patch, models, accept)  # before any model runs, as the CLI
                preds = [_predict([m], patch, tta) for m in models]
                if len(models) > 1:  # and their ensemble, the mean of the members as a job maps it
                    preds.append(_predict(models, patch, tta))
        except LandslideBatchError as exc:
            st.error(str(exc))
            if isinstance(exc, UnitsMismatchError):
                st.info(f"Nothing was mapped. If the values are right, tick “{ACCEPT_UNITS}” and run again.")
            return
        warnings += [
            f"{p.label}: {w}" if len(preds) > 1 else w for p in preds for w in inference.result_check(p, patch)
        ]
        st.session_state["results"] = (key, preds, warnings)
    stored = st.session_state.get("results")
    if stored and stored[0] == key:
        for msg in stored[2]:
            st.warning(msg)
        _show(patch, stored[1], truth, pictures.rgb_composite(patch))


@st.cache_resource(show_spinner=False, max_entries=8)
def _run_map(folder: str, stamp: int, outputs: str) -> runs_view.RunMap | None:
    """The map's layers are read once per run (``stamp``: run.json's time, new after a rerun)."""
    return runs_view.run_map(Path(folder), json.loads(outputs))


def runs_mode() -> None:
    st.header("Region runs")
    root = run_folders.default_runs_dir()  # fixed by the server: the page never takes a server path
    runs = run_folders.find_runs(root)
    st.sidebar.caption(f"Runs folder: `{root.name or root}` (set by `--runs-dir`)")
    if not runs:
        st.info(
            f"No finished runs (folders with {run_folders.RUN_FILE}) in the runs folder. Start the app with "
            f"`landslide-batch app --runs-dir DIR`."
        )
        return
    folder = st.sidebar.selectbox("Run", runs, format_func=lambda p: run_folders.run_label(root, p), key="run")
    try:
        run = run_folders.read_run(folder)
        region = job_kind(run) == REGION_JOB
    except LandslideBatchError as exc:
        st.error(str(exc))
        return
    st.subheader(run_folders.run_label(root, folder) + (" — region job" if region else ""))
    if run.get("status") != "complete":
        st.warning(f"Run status is {run.get('status')!r}, not 'complete': outputs may be missing or partial.")
    for msg in run.get("warnings") or []:  # what the job warned of (run.json): a 99 % landslide map, say
        st.warning(msg)
    for col, (label, value) in zip(st.columns(4), run_folders.run_headline(run)):
        col.metric(label, value)
    try:
        view = _run_map(
            str(folder), (folder / run_folders.RUN_FILE).stat().st_mtime_ns, json.dumps(run.get("outputs") or {})
        )
    except LandslideBatchError as exc:
        st.error(str(exc))
        view = None
    if view is not None:
        deck = view.deck()
        scale, length = map_scale.scale_bar(view.bounds)
        deck.layers = [*deck.layers, *scale]  # a new list: the cached view's own is left as it is
        st.pydeck_chart(deck, height=560, key="run-map")
        st.image(runs_view.legend_png(view.names), caption="Legend")
        st.caption(
            "Map: "
            + ", ".join(runs_view.LAYER_LEGEND[n] for n in view.names)
            + f"; the black scale bar is {map_scale.label(length)} on the ground."
            + " Drag to pan, scroll to zoom, hover a polygon or footprint for its values."
        )
    scenes = runs_view.scene_rows(run)
    if scenes:
        st.markdown("**Scenes**")
        st.dataframe(scenes, hide_index=True)
    files, folders = run_folders.run_files(folder, run)
    quicklook = next((f.path for f in files if f.label == "quicklook"), None)
    left, right = st.columns([3, 2])
    if quicklook is not None:
        left.image(str(quicklook), caption="Quicklook", width="stretch")
    else:
        left.info("No quicklook image in this run.")
    details = runs_view.region_details(run) if region else run_folders.run_details(run)
    fields, values = zip(*details)
    right.table({"field": fields, "value": values})
    models = run_folders.run_models(run)
    if models:
        st.markdown("**Models**")
        st.table(models)
    st.markdown("**Downloads**")
    bar = st.container(horizontal=True)
    for f in files:  # a callable is read only on click: region outputs can be hundreds of MB
        bar.download_button(
            f"{f.path.name} ({f.size_label})",
            f.path.read_bytes,
            file_name=f.path.name,
            on_click="ignore",
            key=f"run-{f.label}",
        )
    for f in folders:
        st.caption(
            f"{f.label}: {f.path.name} is a folder (Zarr store); copy it from run "
            f"`{run_folders.run_label(root, folder)}` in the runs folder on the server"
        )
    with st.expander("Job config, versions"):
        st.json({"config": run.get("config"), "versions": run.get("versions")}, expanded=False)


st.set_page_config(page_title="landslide-batch", page_icon="⛰", layout="wide")
st.sidebar.title("landslide-batch")
if st.sidebar.radio("Mode", ["Patch", "Runs"], horizontal=True, key="mode") == "Patch":
    patch_mode()
else:
    runs_mode()
