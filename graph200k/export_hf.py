"""`export --format hf`: a `save_to_disk` DatasetDict (`train`, `test`) with the hub's columns.

One pass over the shards: every row goes to its split's Arrow file (datasets' ArrowWriter,
the hub's features), then `DatasetDict.save_to_disk` lays the splits out as the hub does
(`dataset_dict.json`, `train/`, `test/`). Image bytes are copied, never re-encoded.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from graph200k.export_columns import hub_features
from graph200k.export_rows import ExportReport, iter_hub_rows
from graph200k.splits import DEFAULT_TEST_FRACTION, SPLITS


def export_hf(src, out, manifest=None, test_fraction: float = DEFAULT_TEST_FRACTION,
              num_proc: int | None = None) -> ExportReport:
    """Write `out` (a folder) as a DatasetDict; returns what was written and left out."""
    from datasets import Dataset, DatasetDict
    from datasets.arrow_writer import ArrowWriter

    out = Path(out)
    features = hub_features()
    report = ExportReport()
    out.parent.mkdir(parents=True, exist_ok=True)
    # The staging folder sits beside `out` (same disk: save_to_disk moves bytes once).
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        writers = {s: ArrowWriter(features=features, path=str(Path(tmp) / f"{s}.arrow"))
                   for s in SPLITS}
        try:
            for split, _key, row in iter_hub_rows(src, manifest, test_fraction, report):
                writers[split].write(features.encode_example(row))
        finally:
            for w in writers.values():
                w.finalize()
        dd = DatasetDict({s: Dataset.from_file(str(Path(tmp) / f"{s}.arrow")) for s in SPLITS})
        staged = Path(tmp) / "dataset"
        dd.save_to_disk(str(staged), num_proc=num_proc)
        del dd
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)  # a half-written export never appears under its final name
    return report
