"""The endpoint cases of the client matrix (imported by the per-family test files; no tests here)."""

from __future__ import annotations

import pytest

from tests.helpers.clients import (
    NEEDS_BETA_RESPONSES,
    Case,
    Expect,
    fixture_responder,
    request_id_of,
    usage_aware_stream,
    usage_dict,
)

MSG = [{"role": "user", "content": "Say this is a test"}]
WAV = ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake-audio-bytes", "audio/wav")
PNG = ("a.png", b"\x89PNG\r\n\x1a\nfake-image-bytes", "image/png")
SPEECH_INPUT = "The quick brown fox jumped over the lazy dog."


def _chat_detail_zeroes(**kw: int) -> dict[str, int]:
    base = dict(cached_input_tokens=0, audio_input_tokens=0, reasoning_tokens=0, audio_output_tokens=0)
    base.update(kw)
    return base


CHAT = [
    Case(
        "chat-reasoning",
        "POST",
        "/chat/completions",
        fixture_responder("chat_gpt5_nano_reasoning"),
        lambda c: c.chat.completions.create(model="gpt-5-nano", messages=MSG),
        Expect(
            "chat.completions",
            "gpt-5-nano",
            "gpt-5-nano-2025-08-07",
            usage_dict(input_tokens=11, output_tokens=228, **_chat_detail_zeroes(reasoning_tokens=192)),
            service_tier="default",
            request_ids=[request_id_of("chat_gpt5_nano_reasoning")],
        ),
    ),
    Case(
        "chat-vision",
        "POST",
        "/chat/completions",
        fixture_responder("chat_gpt4_vision_preview_2024"),
        lambda c: c.chat.completions.create(
            model="gpt-4-vision-preview",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
                    ],
                }
            ],
        ),
        Expect(
            "chat.completions",
            "gpt-4-vision-preview",
            "gpt-4-1106-vision-preview",
            usage_dict(input_tokens=438, output_tokens=16),
            request_ids=[request_id_of("chat_gpt4_vision_preview_2024")],
        ),
    ),
    Case(
        "chat-cached",
        "POST",
        "/chat/completions",
        fixture_responder("chat_gpt56_cached_4012"),
        lambda c: c.chat.completions.create(model="gpt-5.6-sol", messages=MSG),
        Expect(
            "chat.completions",
            "gpt-5.6-sol",
            "gpt-5.6-sol",
            usage_dict(
                input_tokens=4020,
                output_tokens=4,
                cache_write_tokens=0,
                **_chat_detail_zeroes(cached_input_tokens=4012),
            ),
            service_tier="default",
            request_ids=[],
        ),
    ),
    Case(
        "chat-audio",
        "POST",
        "/chat/completions",
        fixture_responder("chat_gpt4o_audio_tokens"),
        lambda c: c.chat.completions.create(
            model="gpt-4o-audio-preview",
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            messages=MSG,
        ),
        Expect(
            "chat.completions",
            "gpt-4o-audio-preview",
            "gpt-4o-audio-preview-2024-12-17",
            usage_dict(
                input_tokens=45,
                output_tokens=310,
                image_input_tokens=0,
                **_chat_detail_zeroes(audio_input_tokens=20, audio_output_tokens=280),
            ),
            service_tier="default",
            request_ids=[request_id_of("chat_gpt4o_audio_tokens")],
        ),
    ),
    Case(
        "chat-stream",
        "POST",
        "/chat/completions",
        usage_aware_stream("chat_stream_gpt4_include_usage"),
        lambda c: c.chat.completions.create(model="gpt-4", messages=MSG, stream=True),
        Expect(
            "chat.completions",
            "gpt-4",
            "gpt-4-0613",
            usage_dict(input_tokens=12, output_tokens=5, **_chat_detail_zeroes()),
            request_ids=[request_id_of("chat_stream_gpt4_include_usage")],
            stream=True,
        ),
        estimated_in=("raw", "streaming"),
    ),
]

COMPLETIONS = [
    Case(
        "completions",
        "POST",
        "/completions",
        fixture_responder("completions_gpt35_instruct"),
        lambda c: c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=7
        ),
        Expect(
            "completions",
            "gpt-3.5-turbo-instruct",
            "gpt-3.5-turbo-instruct-0914",
            usage_dict(input_tokens=5, output_tokens=7),
            request_ids=["req_completions_gpt35_instruct"],
        ),
    ),
    Case(
        "completions-stream",
        "POST",
        "/completions",
        usage_aware_stream("completions_stream_gpt35_instruct"),
        lambda c: c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say this is a test", stream=True
        ),
        Expect(
            "completions",
            "gpt-3.5-turbo-instruct",
            "gpt-3.5-turbo-instruct-0914",
            usage_dict(input_tokens=5, output_tokens=6),
            request_ids=["req_completions_stream_gpt35_instruct"],
            stream=True,
        ),
        estimated_in=("raw", "streaming"),
    ),
]

RESPONSES = [
    Case(
        "responses",
        "POST",
        "/responses",
        fixture_responder("responses_gpt5_mini_reasoning"),
        lambda c: c.responses.create(model="gpt-5-mini", input="Where was it played?", max_output_tokens=500),
        Expect(
            "responses",
            "gpt-5-mini",
            "gpt-5-mini-2025-08-07",
            usage_dict(input_tokens=54, cached_input_tokens=0, output_tokens=164, reasoning_tokens=128),
            service_tier="default",
            request_ids=[request_id_of("responses_gpt5_mini_reasoning")],
        ),
    ),
    Case(
        "beta-responses",
        "POST",
        "/responses",
        fixture_responder("responses_gpt5_mini_reasoning"),
        lambda c: c.beta.responses.create(model="gpt-5-mini", input="Where was it played?"),
        Expect(
            "responses",
            "gpt-5-mini",
            "gpt-5-mini-2025-08-07",
            usage_dict(input_tokens=54, cached_input_tokens=0, output_tokens=164, reasoning_tokens=128),
            service_tier="default",
            request_ids=[request_id_of("responses_gpt5_mini_reasoning")],
        ),
        marks=(NEEDS_BETA_RESPONSES,),
    ),
    Case(
        "responses-stream",
        "POST",
        "/responses",
        fixture_responder("responses_stream_gpt41_nano"),
        lambda c: c.responses.create(model="gpt-4.1-nano", input="What is 2+2?", stream=True),
        Expect(
            "responses",
            "gpt-4.1-nano",
            "gpt-4.1-nano-2025-04-14",
            usage_dict(input_tokens=14, cached_input_tokens=0, output_tokens=9, reasoning_tokens=0),
            # response.created says "auto"; the terminal event reports the tier actually used.
            service_tier="default",
            request_ids=[request_id_of("responses_stream_gpt41_nano")],
            stream=True,
        ),
    ),
    Case(
        "responses-stream-2025",
        "POST",
        "/responses",
        fixture_responder("responses_stream_gpt4o_2025"),
        lambda c: c.responses.create(model="gpt-4o", input="Hello!", stream=True),
        Expect(
            "responses",
            "gpt-4o",
            "gpt-4o-2024-08-06",
            usage_dict(input_tokens=27, cached_input_tokens=0, output_tokens=11, reasoning_tokens=0),
            request_ids=[request_id_of("responses_stream_gpt4o_2025")],
            stream=True,
        ),
    ),
]

RESPONSES += [
    Case(
        "responses-stream-incomplete",
        "POST",
        "/responses",
        fixture_responder("responses_stream_incomplete"),
        lambda c: c.responses.create(
            model="gpt-4.1-nano", input="Tell me a story", stream=True, max_output_tokens=16
        ),
        Expect(
            "responses",
            "gpt-4.1-nano",
            "gpt-4.1-nano-2025-04-14",
            usage_dict(input_tokens=20, cached_input_tokens=0, output_tokens=16, reasoning_tokens=0),
            service_tier="flex",
            request_ids=["req_responses_stream_incomplete"],
            stream=True,
        ),
    ),
]

EMBEDDINGS = [
    Case(
        "embeddings",
        "POST",
        "/embeddings",
        fixture_responder("embeddings_3small_token_ids"),
        lambda c: c.embeddings.create(
            model="text-embedding-3-small",
            input=[[104, 101], [119, 111]],
            encoding_format="base64",
            dimensions=456,
        ),
        Expect(
            "embeddings",
            "text-embedding-3-small",
            "text-embedding-3-small",
            usage_dict(input_tokens=14),
            request_ids=[request_id_of("embeddings_3small_token_ids")],
        ),
    ),
]

IMAGES = [
    Case(
        "images-gpt-image-1",
        "POST",
        "/images/generations",
        fixture_responder("images_gpt_image_1_generate_options"),
        lambda c: c.images.generate(
            model="gpt-image-1", prompt="An isolated stop sign.", n=2, size="1024x1536"
        ),
        Expect(
            "images.generate",
            "gpt-image-1",
            None,
            usage_dict(
                input_tokens=22,
                image_input_tokens=0,
                output_tokens=12480,
                image_output_tokens=12480,
                images=2,
            ),
            request_ids=[request_id_of("images_gpt_image_1_generate_options")],
        ),
    ),
    Case(
        "images-dalle-3",
        "POST",
        "/images/generations",
        fixture_responder("images_dalle3_generate"),
        lambda c: c.images.generate(
            model="dall-e-3", prompt="a white siamese cat", size="1024x1024", quality="hd"
        ),
        Expect(
            "images.generate",
            "dall-e-3",
            None,
            usage_dict(images=1),
            request_ids=["req_images_dalle3_generate"],
        ),
    ),
    Case(
        "images-stream",
        "POST",
        "/images/generations",
        fixture_responder("images_stream_gpt_image_1"),
        lambda c: c.images.generate(
            model="gpt-image-1", prompt="a red square", stream=True, partial_images=1
        ),
        Expect(
            "images.generate",
            "gpt-image-1",
            None,
            usage_dict(input_tokens=12, image_input_tokens=0, output_tokens=272, images=1),
            request_ids=["req_images_stream_gpt_image_1"],
            stream=True,
        ),
    ),
    Case(
        "images-edit",
        "POST",
        "/images/edits",
        fixture_responder("images_edit_gpt_image_1"),
        lambda c: c.images.edit(model="gpt-image-1", image=PNG, prompt="add a hat"),
        Expect(
            "images.edit",
            "gpt-image-1",
            None,
            usage_dict(
                input_tokens=340,
                image_input_tokens=323,
                output_tokens=1056,
                image_output_tokens=1056,
                images=1,
            ),
            request_ids=["req_images_edit_gpt_image_1"],
        ),
    ),
]

IMAGES += [
    Case(
        "images-stream-n2",
        "POST",
        "/images/generations",
        fixture_responder("images_stream_gpt_image_1_n2"),
        lambda c: c.images.generate(model="gpt-image-1", prompt="two red squares", n=2, stream=True),
        Expect(
            "images.generate",
            "gpt-image-1",
            None,
            # One `image_generation.completed` per image, each with its own usage: summed.
            usage_dict(input_tokens=100, image_input_tokens=80, output_tokens=544, images=2),
            request_ids=["req_images_stream_gpt_image_1_n2"],
            stream=True,
        ),
    ),
    Case(
        "images-edit-stream",
        "POST",
        "/images/edits",
        fixture_responder("images_edit_stream_gpt_image_1"),
        lambda c: c.images.edit(
            model="gpt-image-1", image=PNG, prompt="add a hat", stream=True, partial_images=1
        ),
        Expect(
            "images.edit",
            "gpt-image-1",
            None,
            usage_dict(input_tokens=340, image_input_tokens=323, output_tokens=1056, images=1),
            request_ids=["req_images_edit_stream_gpt_image_1"],
            stream=True,
        ),
    ),
]

AUDIO = [
    Case(
        "transcription-whisper-json",
        "POST",
        "/audio/transcriptions",
        fixture_responder("audio_transcription_whisper_json"),
        lambda c: c.audio.transcriptions.create(model="whisper-1", file=WAV),
        Expect(
            "audio.transcriptions",
            "whisper-1",
            None,
            usage_dict(seconds=4.0),
            request_ids=["req_audio_transcription_whisper_json"],
        ),
    ),
    Case(
        "transcription-tokens",
        "POST",
        "/audio/transcriptions",
        fixture_responder("audio_transcribe_diarize_tokens"),
        lambda c: c.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=WAV, response_format="diarized_json"
        ),
        Expect(
            "audio.transcriptions",
            "gpt-4o-transcribe-diarize",
            None,
            usage_dict(input_tokens=64, audio_input_tokens=64, output_tokens=225),
            request_ids=[request_id_of("audio_transcribe_diarize_tokens")],
        ),
    ),
    Case(
        "transcription-text",
        "POST",
        "/audio/transcriptions",
        fixture_responder("audio_transcription_text"),
        lambda c: c.audio.transcriptions.create(model="whisper-1", file=WAV, response_format="text"),
        Expect(
            "audio.transcriptions",
            "whisper-1",
            None,
            usage_dict(),
            usage_source="none",
            request_ids=["req_audio_transcription_text"],
        ),
    ),
    Case(
        "translation-verbose",
        "POST",
        "/audio/translations",
        fixture_responder("audio_translation_verbose"),
        lambda c: c.audio.translations.create(model="whisper-1", file=WAV, response_format="verbose_json"),
        Expect(
            "audio.translations",
            "whisper-1",
            None,
            usage_dict(seconds=8.47),
            request_ids=["req_audio_translation_verbose"],
        ),
        # `audio.translations.create` is `@deprecated` in the SDK; the call itself is what we test.
        marks=(pytest.mark.filterwarnings("ignore::DeprecationWarning"),),
    ),
    Case(
        "speech",
        "POST",
        "/audio/speech",
        fixture_responder("audio_speech_tts1"),
        lambda c: c.audio.speech.create(model="tts-1", voice="alloy", input=SPEECH_INPUT),
        Expect(
            "audio.speech",
            "tts-1",
            None,
            usage_dict(characters=len(SPEECH_INPUT)),
            request_ids=["req_audio_speech_tts1"],
        ),
    ),
    Case(
        "speech-sse",
        "POST",
        "/audio/speech",
        fixture_responder("audio_speech_sse_gpt4o_mini_tts"),
        lambda c: c.audio.speech.create(
            model="gpt-4o-mini-tts", voice="alloy", input="Hello there, friend.", stream_format="sse"
        ),
        Expect(
            "audio.speech",
            "gpt-4o-mini-tts",
            None,
            usage_dict(input_tokens=14, output_tokens=101, characters=len("Hello there, friend.")),
            request_ids=["req_audio_speech_sse_gpt4o_mini_tts"],
        ),
    ),
    Case(
        "transcription-stream",
        "POST",
        "/audio/transcriptions",
        fixture_responder("audio_transcription_stream_gpt4o"),
        lambda c: c.audio.transcriptions.create(model="gpt-4o-transcribe", file=WAV, stream=True),
        Expect(
            "audio.transcriptions",
            "gpt-4o-transcribe",
            None,
            usage_dict(input_tokens=14, audio_input_tokens=14, output_tokens=45),
            request_ids=["req_audio_transcription_stream_gpt4o"],
            stream=True,
        ),
    ),
]
