"""The Batch API: batches created through a tracked client carry their attribution in their own
``metadata``; their output and error files, read through a tracked client or collected later
(``tracked-openai batches collect``), become one call record per line, priced at batch rates.

``hook`` is the caller's path (what the client does for batch requests), ``worker`` reads
downloaded files off it, ``lines`` makes a line's record, ``meta`` writes and reads the
metadata, ``collect`` finds finished batches and records the ones not recorded yet.
"""

from __future__ import annotations

from .worker import wait

__all__ = ["wait"]
