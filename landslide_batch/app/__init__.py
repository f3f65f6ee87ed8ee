"""The Streamlit web app: try model folders on one patch, browse finished region runs.

``logic`` holds everything the page computes (plain functions, tested without a browser);
``streamlit_app`` is the page script that ``landslide-batch app`` hands to ``streamlit run``.
This module stays import-light: the CLI reads these names without loading torch.
"""

from pathlib import Path

#: Where the page finds model folders and region runs; ``landslide-batch app`` sets them.
MODELS_ENV = "LANDSLIDE_BATCH_MODELS"
RUNS_ENV = "LANDSLIDE_BATCH_RUNS"
PAGE = Path(__file__).resolve().parent / "streamlit_app.py"
