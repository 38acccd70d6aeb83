"""Settings for requests that name entities instead of feature values (no kserve import here)."""

from __future__ import annotations

from pydantic import BaseModel

from components.specs import DatasetSpec, FeastSpec


class EntityLookup(BaseModel):
    """Where the server finds online features for requests that carry entity ids."""

    dataset: DatasetSpec
    feast: FeastSpec
    workspace: str
