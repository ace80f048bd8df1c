"""``python manage.py demo``: the project end to end, offline. Starts tracked-openai's fake
OpenAI server, creates the database and a staff user, calls both views and the REST API through
Django's test client (Celery tasks run in-process: AIFLOW_CELERY_EAGER=1), and prints what was
recorded. ``TRACKED_OPENAI_EXAMPLES_LIVE=1`` uses the real API instead (OPENAI_API_KEY)."""

import json
import os
from contextlib import nullcontext
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.test import Client

import tracked_openai
from tracked_openai._fake_server import serve_fake_openai


class Command(BaseCommand):
    help = "Run the example project offline against the fake OpenAI server"

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings
        from django.contrib.auth import get_user_model

        settings.CELERY_TASK_ALWAYS_EAGER = True
        from aiflow.celery import app

        app.conf.task_always_eager = True
        live = os.environ.get("TRACKED_OPENAI_EXAMPLES_LIVE") == "1"
        with nullcontext() if live else serve_fake_openai() as server:
            if server is not None:
                os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-demo")
            call_command("migrate", verbosity=0)
            web = Client()
            r = web.post(
                "/diagrams/verify/",
                json.dumps({"diagram": "P&ID-101"}),
                content_type="application/json",
                headers={"X-Request-ID": "demo-1"},
            )
            self.stdout.write(f"verify_diagram: {r.status_code} {r.json()['findings'][:40]!r}")
            r = web.get("/specs/generate/", headers={"X-Request-ID": "demo-2"})
            text = b"".join(r.streaming_content).decode()
            r.close()
            self.stdout.write(f"generate_spec: {r.status_code} streamed {len(text)} characters")
        tracked_openai.flush(timeout=60)

        anonymous = web.get("/api/v1/mlflow/tracking/metrics/").status_code
        staff, _ = get_user_model().objects.get_or_create(username="demo-staff", defaults={"is_staff": True})
        web.force_login(staff)
        for feature in ("pid_verification", "pfd_conversion"):
            m = web.get("/api/v1/mlflow/tracking/metrics/", {"feature": feature}).json()["metrics"]
            self.stdout.write(f"{feature}: runs {m['total_runs']} calls {m['total_calls']}")
        self.stdout.write(f"REST API: anonymous {anonymous}, staff 200")
