"""The Streamlit web app: try model folders on one patch, browse finished region runs.

What the page computes lives in plain modules, one concern each, tested without a browser:
``uploads`` (patches and masks checked), ``model_folders`` (models offered), ``inference``
(a patch mapped by the region job's predictor), ``pictures`` and ``downloads`` (what the page
shows and offers), ``run_folders`` (finished runs read and summarised) and ``runs_view`` (a
run's map). ``streamlit_app`` is the page script that ``landslide-batch app`` hands to ``streamlit run``.
This module stays import-light: the CLI reads these names without loading torch.
"""

from pathlib import Path

#: Where the page finds model folders and region runs; ``landslide-batch app`` sets them.
MODELS_ENV = "LANDSLIDE_BATCH_MODELS"
RUNS_ENV = "LANDSLIDE_BATCH_RUNS"
#: Largest upload the page accepts, in MB (also Streamlit's ``server.maxUploadSize``); the default
#: holds the largest patch the page maps (1024 x 1024 x 14 float64, uncompressed: 117 MB).
MAX_UPLOAD_ENV = "LANDSLIDE_BATCH_MAX_UPLOAD_MB"
MAX_UPLOAD_MB = 128
#: A MapLibre style URL for the run map's basemap; unset (offline) draws no basemap.
BASEMAP_ENV = "LANDSLIDE_BATCH_BASEMAP"
PAGE = Path(__file__).resolve().parent / "streamlit_app.py"
