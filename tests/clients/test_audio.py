"""Drop-in client matrix, audio: sync/async x plain/raw/streaming-response (x stream where the API
allows). The caller's value equals a plain `openai` client's for the same bytes; one record each."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cases import AUDIO
from tests.helpers.clients import (
    Case,
    case_params,
    check_case_async,
    check_case_sync,
    fixture_responder,
    make_clients,
)
from tests.helpers.fakeopenai import FakeResponse
from tracked_openai.capture.audio import capture_upload, measure_seconds, subtitle_seconds


@pytest.mark.parametrize(("case", "mode"), case_params(AUDIO))
def test_sync_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    check_case_sync(case, mode, fake, records)


@pytest.mark.parametrize(("case", "mode"), case_params(AUDIO))
async def test_async_matches_plain_sdk_and_records_once(case: Case, mode: str, fake, records) -> None:
    await check_case_async(case, mode, fake, records)


def _wav(seconds: float, rate: int = 8000) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


def _mp3(frames: int) -> bytes:
    """MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono: frames of 417 bytes, 1152 samples each."""
    header = bytes([0xFF, 0xFB, 0x90, 0xC4])
    return (header + b"\x00" * (417 - len(header))) * frames


SRT = "1\n00:00:00,000 --> 00:00:02,500\nHello\n\n2\n00:00:02,500 --> 00:01:04,250\nfrom the fake endpoint.\n"
VTT = "WEBVTT\n\n00:00.000 --> 00:03.100\nHello\n\n01:00:00.000 --> 01:00:01.500\nlater\n"


def _text(body: str) -> Any:
    return lambda request: FakeResponse(text=body, headers={"x-request-id": "req_text"})


def test_text_transcription_seconds_measured_from_file(fake, records) -> None:
    fake.add("POST", "/audio/transcriptions", fixture_responder("audio_transcription_text"))
    tracked, _, _ = make_clients(fake, is_async=False)
    out = tracked.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", _wav(2.5), "audio/wav"), response_format="text"
    )
    assert out == "Hello from the fake endpoint.\n"
    (call,) = records.calls
    assert call.usage.seconds == pytest.approx(2.5)
    assert call.usage_source == "estimated"
    # whisper-1: $0.006 per minute of input audio.
    assert call.cost is not None and call.cost.total_usd == Decimal("2.5") * Decimal("0.006") / 60


def test_transcription_of_a_path_and_of_an_open_file_is_measured(fake, records, tmp_path: Path) -> None:
    fake.add("POST", "/audio/transcriptions", fixture_responder("audio_transcription_text"))
    tracked, _, _ = make_clients(fake, is_async=False)
    wav = tmp_path / "meeting.wav"
    wav.write_bytes(_wav(4.0))
    mp3 = tmp_path / "memo.mp3"
    mp3.write_bytes(_mp3(200))
    tracked.audio.transcriptions.create(model="whisper-1", file=wav, response_format="text")
    with mp3.open("rb") as fh:
        tracked.audio.transcriptions.create(model="whisper-1", file=fh, response_format="vtt")
    first, second = records.calls
    assert first.usage.seconds == pytest.approx(4.0)
    # mutagen's length of 200 frames x 1152 samples at 44.1 kHz (5.22 s).
    assert second.usage.seconds == pytest.approx(200 * 1152 / 44100, rel=0.01)
    assert {first.usage_source, second.usage_source} == {"estimated"}


async def test_async_srt_falls_back_to_the_last_cue_when_the_file_cannot_be_read(fake, records) -> None:
    """An in-memory file object is not re-read (it is the caller's); an SRT body still gives a
    lower bound: its last cue's end."""
    fake.add("POST", "/audio/transcriptions", _text(SRT))
    tracked, _, _ = make_clients(fake, is_async=True)
    out = await tracked.audio.transcriptions.create(
        model="whisper-1", file=io.BytesIO(_wav(99.0)), response_format="srt"
    )
    assert out == SRT
    await tracked.close()
    (call,) = records.calls
    assert call.usage.seconds == pytest.approx(64.25)
    assert call.usage_source == "estimated"


def test_unmeasurable_text_transcription_stays_unpriced(fake, records) -> None:
    fake.add("POST", "/audio/transcriptions", fixture_responder("audio_transcription_text"))
    tracked, _, _ = make_clients(fake, is_async=False)
    tracked.audio.transcriptions.create(
        model="whisper-1", file=("a.ogg", b"not audio at all", "audio/ogg"), response_format="text"
    )
    (call,) = records.calls
    assert call.usage.seconds is None and call.usage_source == "none"
    assert call.cost is None


# `audio.translations.create` is `@deprecated` in recent SDKs (not in older ones); the call itself
# is what we test.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_json_translation_without_duration_is_measured(fake, records) -> None:
    fake.add(
        "POST",
        "/audio/translations",
        lambda request: FakeResponse(json_body={"text": "Hello."}, headers={"x-request-id": "req_tr"}),
    )
    tracked, _, _ = make_clients(fake, is_async=False)
    out = tracked.audio.translations.create(model="whisper-1", file=("a.wav", _wav(1.25), "audio/wav"))
    assert out.text == "Hello."
    (call,) = records.calls
    assert call.usage.seconds == pytest.approx(1.25) and call.usage_source == "estimated"


def test_a_duration_in_the_response_is_never_replaced(fake, records) -> None:
    fake.add("POST", "/audio/transcriptions", fixture_responder("audio_transcription_whisper_json"))
    tracked, _, _ = make_clients(fake, is_async=False)
    tracked.audio.transcriptions.create(model="whisper-1", file=("a.wav", _wav(600.0), "audio/wav"))
    (call,) = records.calls
    assert call.usage_source == "response" and call.usage.seconds != pytest.approx(600.0)


def test_measuring_helpers_never_raise() -> None:
    assert measure_seconds(b"") is None
    assert measure_seconds(b"RIFF\x00\x00\x00\x00WAVEjunk") is None
    assert measure_seconds("/nonexistent/file.wav") is None
    assert measure_seconds(_wav(0.5)) == pytest.approx(0.5)
    assert subtitle_seconds(VTT) == pytest.approx(3601.5)
    assert subtitle_seconds("no cues") is None
    assert capture_upload([("file", io.BytesIO(b"x"))]) is None
    assert capture_upload([("file", ("a.wav", b"abc", "audio/wav"))]) == b"abc"
    assert capture_upload(None) is None
