"""``tracked-openai batches collect``: record the finished batches no tracked client has read.

Lists the organisation's batches (``GET /batches``, newest first, page by page), keeps those
finished since ``since`` (``completed``, or ``expired``/``cancelled`` with
files: those bill the requests they ran), and for each asks the tracking store which of its lines are
recorded already (call runs tagged with its batch id). A batch with every line recorded is not
downloaded again; the others' output and error files are downloaded with a plain SDK client
and each line not yet recorded becomes a record (``lines.line_record``: the same ids as when a
tracked client reads the file, so whichever comes first, each line is recorded once). Records
go through the exporter like any other, priced at batch rates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..export import runtime
from ..mlflow.store import read_client
from ..pricing import price_record
from ..reports import StoreNotFoundError, resolve_tracking_uri
from ..reports.call_runs import sql_store
from ..reports.call_spans import iter_call_spans
from ..reports.query import _tracked_experiments, iter_runs
from .lines import BATCH_ID_TAG, BatchInfo, is_batch_line, line_record, parse_lines

__all__ = ["CollectResult", "collect", "recorded_ids"]

FINISHED = frozenset({"completed", "expired", "cancelled"})

Progress = Callable[[int, int | None, str], None]


@dataclass
class CollectResult:
    """What one ``collect`` found and did."""

    batches: int = 0  # finished batches in the window
    downloaded: int = 0  # batches whose files were read
    lines: int = 0  # lines read
    new: int = 0  # records made now
    already: int = 0  # lines recorded before (skipped)
    errors: int = 0  # of the new records, error lines
    unreadable: int = 0  # lines that are not a batch line (corrupt, cut)
    cost_usd: Decimal = Decimal(0)  # of the new records
    unpriced: int = 0  # new records with usage and no price
    flushed: bool = True
    skipped: list[str] = field(default_factory=list)  # batch ids skipped whole (all recorded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "downloaded": self.downloaded,
            "lines": self.lines,
            "records_new": self.new,
            "already_recorded": self.already,
            "errors": self.errors,
            "unreadable_lines": self.unreadable,
            "cost_usd": str(self.cost_usd),
            "unpriced": self.unpriced,
            "flushed": self.flushed,
        }


def recorded_ids(tracking_uri: str | None, info: BatchInfo) -> set[str]:
    """Record ids of the lines of batch ``info`` in the store, as call runs (searched by their
    batch id tag) or call spans (``traces`` modes: the spans started while the batch ran, kept
    when they carry its id). Empty if there is no store yet."""
    found: set[str] = set()
    quoted = info.id.replace("'", "\\'")
    try:
        for run in iter_runs(
            None,
            tracking_uri=tracking_uri,
            filter_string=f"tags.`{BATCH_ID_TAG}` = '{quoted}' AND tags.kind = 'call'",
        ):
            record_id = run.data.tags.get("record_id")
            if record_id:
                found.add(record_id)
        found.update(_span_ids(tracking_uri, info))
    except StoreNotFoundError:
        pass
    return found


def _span_ids(tracking_uri: str | None, info: BatchInfo) -> Iterator[str]:
    # A line starts when OpenAI ran it (between the batch's creation and its completion) or, an
    # error line, at the completion: that window holds every span of the batch.
    if info.created_at is None:
        return
    until = (info.completed_at or info.created_at + 2 * 86_400) + 1
    client = read_client(resolve_tracking_uri(tracking_uri))
    try:
        ids = [e.experiment_id for e in _tracked_experiments(client)]
        spans = iter_call_spans(
            client, sql_store(client), ids, info.created_at * 1000, until * 1000, None, 1_000
        )
        for _, _, run in spans:
            if run.data.tags.get(BATCH_ID_TAG) == info.id:
                record_id = run.data.tags.get("record_id")
                if record_id:
                    yield record_id
    except Exception as exc:
        if isinstance(exc, NotImplementedError) or "not supported" in str(exc).lower():
            return  # a store without traces: its runs are all there is
        raise


def _finished(client: Any, since: datetime | None) -> Iterator[Any]:
    floor = since.timestamp() if since is not None else None
    for batch in client.batches.list(limit=100):
        created = batch.created_at or 0
        if floor is not None and created < floor:
            return  # newest first: the rest are older
        # Expired and cancelled batches bill the requests they did run: their files count too.
        if batch.status in FINISHED and (batch.output_file_id or batch.error_file_id):
            yield batch


def collect(
    client: Any,
    *,
    since: datetime | None = None,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
    flush_timeout: float = 120.0,
) -> CollectResult:
    """Record the lines of finished batches (created since ``since``) not recorded yet.

    ``client`` is a plain ``openai.OpenAI`` (a tracked one would record each download twice
    over: once here and once by its own hook, which the ids make harmless but slow)."""
    result = CollectResult()
    batches = [BatchInfo.of(b) for b in _finished(client, since)]
    result.batches = len(batches)
    for done, info in enumerate(batches):
        if progress is not None:
            progress(done, len(batches), info.id)
        recorded = recorded_ids(tracking_uri, info)
        if info.total and len(recorded) >= info.total:
            result.already += len(recorded)
            result.skipped.append(info.id)
            continue
        result.downloaded += 1
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id:
                _record_file(client, info, file_id, recorded, result)
    if progress is not None:
        progress(len(batches), len(batches), "")
    result.flushed = runtime.flush(flush_timeout)
    return result


def _record_file(
    client: Any, info: BatchInfo, file_id: str, recorded: set[str], result: CollectResult
) -> None:
    content = client.files.content(file_id).content
    for line in parse_lines([content]):
        result.lines += 1
        if not is_batch_line(line):
            result.unreadable += 1
            continue
        record = line_record(info, line)
        if record.record_id in recorded:
            result.already += 1
            continue
        recorded.add(record.record_id)  # a line listed twice is recorded once
        # Priced here for the summary; the exporter keeps a price it is given.
        price_record(record)
        result.new += 1
        if record.status == "error":
            result.errors += 1
        if record.cost is not None:
            result.cost_usd += record.cost.total_usd
        elif not record.usage.is_empty():
            result.unpriced += 1
        runtime.submit(record)
