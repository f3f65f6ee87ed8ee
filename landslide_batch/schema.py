"""Base of every YAML-backed config: unknown keys are errors, not silently ignored."""

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from .storage import path_or_uri

#: A local path (a ``Path``; a loader rebases relative ones on the YAML's folder) or a URI
#: (``s3://``, ``gs://``, ``az://``, ``abfs://``, ``http(s)://``: kept as the string, never rebased).
PathOrUri = Annotated[Path | str, BeforeValidator(path_or_uri)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
