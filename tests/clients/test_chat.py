"""Drop-in client matrix, chat: sync/async x plain/raw/streaming-response (x stream where the API
allows). The caller's value equals a plain `openai` client's for the same bytes; one record each."""

from __future__ import annotations

import pytest

from tests.helpers.cases import CHAT
from tests.helpers.clients import Case, case_params, check_case_async, check_case_sync


@pytest.mark.parametrize(("case", "mode"), case_params(CHAT))
def test_sync_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    check_case_sync(case, mode, fake, records)


@pytest.mark.parametrize(("case", "mode"), case_params(CHAT))
async def test_async_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    await check_case_async(case, mode, fake, records)
