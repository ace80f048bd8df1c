"""Audio duration of an uploaded file, for transcriptions/translations whose response has none.

whisper-style models bill per minute of input audio. The ``json`` transcription response says
how many seconds it billed (``usage.seconds``) and ``verbose_json`` has ``duration``, but
``text``/``srt``/``vtt`` transcriptions and ``json`` translations come back with neither. Then
the duration is measured from the bytes that were uploaded, on the exporter thread (never on the
caller's): WAV with the standard library, every other container mutagen reads (mp3, m4a/mp4,
ogg/opus, flac, …). When the file can't be reached or read, an ``srt``/``vtt`` body's last cue end
is the fallback. Either way the record says ``usage_source="estimated"``.
"""

from __future__ import annotations

import io
import os
import re
import wave
from typing import Any

__all__ = ["capture_upload", "measure_seconds", "subtitle_seconds"]

# Uploads above the API's own limit (25 MB) are not worth reading back.
_MAX_BYTES = 64 * 1024 * 1024
_CUE = re.compile(rb"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{3})\s*-->\s*(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{3})")


def capture_upload(files: Any) -> bytes | str | None:
    """What to measure later: the uploaded ``file`` as bytes, or a path to read on the exporter
    thread. O(1) and no I/O: bytes are referenced, paths are not touched here.

    ``files`` is the SDK's ``options.files``: ``[("file", FileTypes)]`` where ``FileTypes`` is
    the content or a ``(name, content[, content_type[, headers]])`` tuple and content is
    ``bytes``, a path, or a binary file object. A file object is only re-read by its ``name``
    when that is a path (``open(...)``): reading the caller's object itself from another thread
    could race with it (and a ``BytesIO`` buffer can't be pinned without breaking its owner).
    """
    if not isinstance(files, (list, tuple)):
        return None
    for item in files:
        if not (isinstance(item, tuple) and len(item) == 2 and item[0] == "file"):
            continue
        content = item[1]
        if isinstance(content, tuple):
            content = content[1] if len(content) >= 2 else None
        if isinstance(content, bytes):
            return content
        if isinstance(content, os.PathLike):
            path = os.fspath(content)
            return path if isinstance(path, str) else None
        name = getattr(content, "name", None)
        if isinstance(name, str) and name and not isinstance(content, io.BytesIO):
            return name
        return None
    return None


def measure_seconds(source: bytes | str) -> float | None:
    """Duration in seconds of the audio in ``source`` (bytes or a path); ``None`` if unknown."""
    try:
        if isinstance(source, str):
            if os.path.getsize(source) > _MAX_BYTES:
                return None
            with open(source, "rb") as fh:
                data = fh.read()
        else:
            data = source
        return _wav_seconds(data) if data[:4] == b"RIFF" and data[8:12] == b"WAVE" else _mutagen_seconds(data)
    except Exception:  # unreadable, truncated or foreign: the duration is simply unknown
        return None


def _wav_seconds(data: bytes) -> float | None:
    with wave.open(io.BytesIO(data), "rb") as w:
        rate = w.getframerate()
        return w.getnframes() / rate if rate > 0 else None


def _mutagen_seconds(data: bytes) -> float | None:
    import mutagen

    audio = mutagen.File(io.BytesIO(data))
    length = getattr(getattr(audio, "info", None), "length", None)
    if isinstance(length, (int, float)) and length > 0:
        return float(length)
    return None


def subtitle_seconds(body: str | bytes) -> float | None:
    """The last cue's end time of an SRT or WebVTT body (a lower bound of the audio's length)."""
    data = body.encode("utf-8", "replace") if isinstance(body, str) else body
    end = None
    for match in _CUE.finditer(data):
        h, m, s, ms = (int(g or 0) for g in match.groups()[4:])
        seconds = h * 3600 + m * 60 + s + ms / 1000
        end = seconds if end is None or seconds > end else end
    return end
