"""Checkpoints from a Hugging Face model repository (``import-model --hub REPO_ID``), downloaded
by ``huggingface_hub`` (its cache, resume and checksum of the file against the hub's ETag).

``HF_ENDPOINT`` (a mirror, or a test's loopback server) is read at each call: huggingface_hub
reads it once, when it is first imported, and another library may have imported it before.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DownloadError, ModelError

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Where the study's checkpoints lie in its repository (``harshinde/Sims``): a mirror keeps the layout.
STUDY_FOLDER = "models"


def hub_file(repo_id: str, filename: str, revision: str = "main", cache: Path | None = None) -> tuple[Path, str]:
    """``filename`` of model repository ``repo_id`` at ``revision``, downloaded (or found in the
    cache) -> (local path, the URL it came from, for the model card)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{repo_id}/resolve/{revision}/{filename}"
    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache, endpoint=endpoint, etag_timeout=30
        )
    except HFValidationError as exc:
        raise ModelError(f"--hub {repo_id!r}: not a model repository id (expected OWNER/NAME): {exc}") from None
    except LocalEntryNotFoundError as exc:  # the hub unreachable, and the file not in the cache
        raise DownloadError(f"{url}: cannot download ({exc}); is {endpoint} reachable?") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelError(f"{url}: no such repository or revision on {endpoint} ({type(exc).__name__})") from None
    except EntryNotFoundError:
        raise ModelError(
            f"{url}: the repository has no file {filename!r}; a mirror of the study keeps its layout"
        ) from None
    except (HfHubHTTPError, OSError) as exc:  # unreachable, refused, cut off: the hub's and the network's
        raise DownloadError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    return Path(path), url
