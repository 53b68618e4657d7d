"""Dispute evidence (SPEC §4.3, §5, §6): the CSV export, manifests, packets, the offline verifier."""

from __future__ import annotations

from kernel.export.csv import (
    EXPORT_COLUMNS,
    CsvDigest,
    ExportTally,
    export_chunks,
    export_filename,
    neutralise_cell,
    restore_cell,
)
from kernel.export.manifest import month_manifest
from kernel.export.packet import build_packet
from kernel.export.queries import SnapshotRecord, load_snapshot
from kernel.export.verify import Verification, verify_directory, verify_packet

__all__ = [
    "EXPORT_COLUMNS",
    "CsvDigest",
    "ExportTally",
    "SnapshotRecord",
    "Verification",
    "build_packet",
    "export_chunks",
    "export_filename",
    "load_snapshot",
    "month_manifest",
    "neutralise_cell",
    "restore_cell",
    "verify_directory",
    "verify_packet",
]
