"""A fake OpenAI admin API (organization Usage and Costs) on a local HTTP port.

Every page, bucket and result it serves is shaped exactly like OpenAI's documented responses
(``tests/fixtures/admin_api``: the documented ``response_body`` for the page and the
``documented_result_object`` for each result, with our figures put in). It checks the admin key,
reads ``start_time``/``end_time``/``limit``/``page``/``project_ids``/``group_by`` as documented,
answers one bucket per page for completions (so a client must follow ``next_page``), and
remembers every request it saw.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "admin_api"
ADMIN_KEY = "sk-admin-test-key"
_DAY = 86_400


def documented(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def day_ts(day: str) -> int:
    return int(datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC).timestamp())


class FakeAdminAPI:
    """``usage[kind][day]`` and ``costs[day]`` are lists of result fields (model, counts...)."""

    def __init__(self) -> None:
        self.usage: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.costs: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.base_url = ""

    def add_usage(self, kind: str, day: str, project: str = "proj_abc", **fields: Any) -> None:
        result = copy.deepcopy(documented(f"usage_{kind}")["documented_result_object"])
        for key in ("user_id", "api_key_id", "size", "source", "service_tier"):
            if key in result:
                result[key] = None  # not grouped by these
        result.update(project_id=project, **fields)
        if kind == "completions":
            result.setdefault("batch", False)
            result.update({k: fields.get(k, 0) for k in (
                "input_cached_tokens", "input_audio_tokens", "output_audio_tokens")})
        self.usage.setdefault(kind, {}).setdefault(day, []).append(result)

    def add_cost(self, day: str, line_item: str, usd: float, project: str = "proj_abc") -> None:
        result = copy.deepcopy(documented("costs")["documented_result_object"])
        result.update(line_item=line_item, project_id=project)
        result["amount"] = {"value": usd, "currency": "usd"}
        self.costs.setdefault(day, []).append(result)

    # -- serving ---------------------------------------------------------------------------
    def page(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/organization/costs":
            template, per_day, per_page = documented("costs")["response_body"], self.costs, 180
        elif path.startswith("/v1/organization/usage/"):
            kind = path.rsplit("/", 1)[1]
            template, per_page = documented(f"usage_{kind}")["response_body"], 31
            per_day = self.usage.get(kind, {})
        else:
            return 404, {"error": {"message": f"Invalid URL (GET {path})", "type": "invalid_request_error"}}
        start = int(query["start_time"][0])
        end = int(query.get("end_time", [str(start + 7 * _DAY)])[0])
        limit = min(int(query.get("limit", ["7"])[0]), per_page)
        if path.endswith("/completions"):
            limit = 1  # one bucket a page: the client must follow next_page
        projects = set(query.get("project_ids", []))
        first = int(query["page"][0].removeprefix("page_")) if "page" in query else start
        starts = list(range(first, end, _DAY))[:limit]
        buckets = []
        for ts in starts:
            day = datetime.fromtimestamp(ts, tz=UTC).date().isoformat()
            results = [r for r in per_day.get(day, []) if not projects or r["project_id"] in projects]
            buckets.append({"object": "bucket", "start_time": ts, "end_time": ts + _DAY, "results": results})
        body = copy.deepcopy(template)
        body["data"] = buckets
        following = starts[-1] + _DAY if starts else end
        body["has_more"] = following < end
        body["next_page"] = f"page_{following}" if body["has_more"] else None
        return 200, body

    @contextmanager
    def serve(self) -> Iterator[FakeAdminAPI]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                api.requests.append((parts.path, query))
                if self.headers.get("Authorization") != f"Bearer {ADMIN_KEY}":
                    status, body = 401, {"error": {
                        "message": "Incorrect API key provided", "type": "invalid_request_error",
                        "code": "invalid_api_key", "param": None}}
                else:
                    status, body = api.page(parts.path, query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
