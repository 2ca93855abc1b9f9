"""Learning data from outside self-play: ``records`` (game records: CSA, KIF, KI2, JKF, read through
rsshogi and replayed through ``Game``), ``hcpe`` (dlshogi's hcpe and YaneuraOu's psv training rows,
through rsshogi's numpy dtypes)."""

from keisei.data.hcpe import (
    HCPE,
    PSV,
    Sample,
    from_hcpe,
    from_psv,
    read,
    read_samples,
    samples_of,
    to_hcpe,
    to_psv,
    write,
)
from keisei.data.records import FORMATS, GameRecord, ReadReport, RecordError, read_record, read_records, to_result

__all__ = [
    "FORMATS",
    "HCPE",
    "PSV",
    "GameRecord",
    "ReadReport",
    "RecordError",
    "Sample",
    "from_hcpe",
    "from_psv",
    "read",
    "read_record",
    "read_records",
    "read_samples",
    "samples_of",
    "to_hcpe",
    "to_psv",
    "to_result",
    "write",
]
