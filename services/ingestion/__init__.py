"""The ingestion service: producers' JSON in, validated or rejected events out.

Consumes every source topic of the spec (data and label sources) in group
`mlbus-ingestion`, checks each record against its source's data contract
(`mlbus.contracts`), drops ids already accepted within the de-duplication
horizon, and publishes `mlbus.ingest.validated.v1` (keyed by entity id) or
`mlbus.ingest.rejected.v1` (original bytes and every reason). See README.md.
"""

from ._dedupe import NoDedupe, RedisSeenIds, SeenIds
from ._pipeline import FlushInterrupted, IngestionPipeline, IngestionStats
from ._records import rejection_id
from ._service import IngestionService, run
from ._settings import IngestionSettings

__all__ = [
    "FlushInterrupted",
    "IngestionPipeline",
    "IngestionService",
    "IngestionSettings",
    "IngestionStats",
    "NoDedupe",
    "RedisSeenIds",
    "SeenIds",
    "rejection_id",
    "run",
]
