"""A fake OpenAI Batch API on the house fake (``tracked_openai._fake_transport.FakeOpenAI``).

Bodies are shaped as OpenAI documents them (the API reference's "The batch object", "List
batch", "The file object" and "The request output object" pages, read from the copy kept in
https://github.com/tourze/open-ai-api-bundle, openai-docs-api-reference/batch/list.md and
batch/request-output.md, commit 2f09cef): a batch object with ``request_counts``,
``output_file_id``/``error_file_id`` and ``metadata``; output lines
``{"id": "batch_req_…", "custom_id", "response": {"status_code", "request_id", "body": <a
chat.completion>}, "error": null}``; error-file lines with a non-200 ``response`` or an
``error`` object ``{"code", "message"}``.

The fake keeps what ``POST /batches`` sent (its metadata above all), as OpenAI does, and serves
it back from ``GET /batches/{id}`` and ``GET /batches``.
"""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.fakeopenai import FakeOpenAI, FakeResponse

CREATED = 1_765_000_000  # 2025-12-06 05:46:40 UTC
BATCH_ID = "batch_abc123"
INPUT_FILE = "file-abc123"
OUTPUT_FILE = "file-cvaTdG"
ERROR_FILE = "file-HOWS94"
MODEL = "gpt-4o-mini-2024-07-18"

# (custom_id, prompt_tokens, completion_tokens) of the successful lines.
OK_LINES = [("request-1", 24, 15), ("request-2", 1_200, 310), ("request-3", 52_000, 4_096)]
# Batch rates of gpt-4o-mini in pricing/openai.yaml: $0.075 / $0.30 per 1M (standard: $0.15 / $0.60).


def chat_body(custom_id: str, prompt: int, completion: int, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{custom_id}",
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "2 + 2 equals 4.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb",
    }


def output_file() -> bytes:
    lines = []
    for i, (custom_id, prompt, completion) in enumerate(OK_LINES):
        lines.append(
            {
                "id": f"batch_req_{i}",
                "custom_id": custom_id,
                "response": {
                    "status_code": 200,
                    "request_id": f"req_{i:04d}",
                    "body": chat_body(custom_id, prompt, completion, CREATED + 60 + i),
                },
                "error": None,
            }
        )
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def error_file() -> bytes:
    lines = [
        {
            "id": "batch_req_e1",
            "custom_id": "request-4",
            "response": {
                "status_code": 400,
                "request_id": "req_e001",
                "body": {
                    "error": {
                        "message": "Invalid value for 'max_tokens': must be a positive integer.",
                        "type": "invalid_request_error",
                        "param": "max_tokens",
                        "code": None,
                    }
                },
            },
            "error": None,
        },
        {
            "id": "batch_req_e2",
            "custom_id": "request-5",
            "response": None,
            "error": {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired.",
            },
        },
    ]
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


class FakeBatchAPI:
    """Routes of the Batch API on ``fake``; ``batches`` holds what was created, by id."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.batches: dict[str, dict[str, Any]] = {}
        self.created_bodies: list[dict[str, Any]] = []
        fake.add("POST", "/files", FakeResponse(json_body=self.file_object(INPUT_FILE, "batch", 1_024)))
        fake.add("POST", "/batches", self._create)
        fake.add("GET", "/batches", self._list)
        fake.add("GET", f"/files/{OUTPUT_FILE}/content", FakeResponse(content=output_file(), chunk_size=700))
        fake.add("GET", f"/files/{ERROR_FILE}/content", FakeResponse(content=error_file(), chunk_size=700))

    @staticmethod
    def file_object(file_id: str, purpose: str, size: int) -> dict[str, Any]:
        return {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": CREATED,
            "expires_at": CREATED + 30 * 86_400,
            "filename": "batchinput.jsonl",
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }

    def batch_object(self, batch_id: str, metadata: Any, status: str = "validating") -> dict[str, Any]:
        done = status == "completed"
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": INPUT_FILE,
            "completion_window": "24h",
            "status": status,
            "output_file_id": OUTPUT_FILE if done else None,
            "error_file_id": ERROR_FILE if done else None,
            "created_at": CREATED,
            "in_progress_at": CREATED + 5 if done else None,
            "expires_at": CREATED + 86_400,
            "finalizing_at": CREATED + 3_000 if done else None,
            "completed_at": CREATED + 3_030 if done else None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 5, "completed": 3, "failed": 2}
            if done
            else {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }

    def complete(self, batch_id: str) -> None:
        """OpenAI finished the batch: its files are there."""
        batch = self.batches[batch_id]
        self.batches[batch_id] = self.batch_object(batch_id, batch["metadata"], "completed")
        self.fake.add("GET", f"/batches/{batch_id}", FakeResponse(json_body=self.batches[batch_id]))

    def add_completed(self, batch_id: str, metadata: Any) -> None:
        """A batch created elsewhere (not through this process)."""
        self.batches[batch_id] = self.batch_object(batch_id, metadata)
        self.complete(batch_id)

    def _create(self, request: Any) -> FakeResponse:
        body = json.loads(request.content)
        self.created_bodies.append(body)
        batch_id = BATCH_ID if BATCH_ID not in self.batches else f"batch_{len(self.batches)}"
        self.batches[batch_id] = self.batch_object(batch_id, body.get("metadata"))
        self.fake.add("GET", f"/batches/{batch_id}", FakeResponse(json_body=self.batches[batch_id]))
        return FakeResponse(json_body=self.batches[batch_id])

    def _list(self, request: Any) -> FakeResponse:
        data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        return FakeResponse(
            json_body={
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )
