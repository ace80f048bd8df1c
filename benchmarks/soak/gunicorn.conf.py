"""gunicorn settings for the soak: the app is imported in each worker, not in the master, so
every worker has its own exporter; recycling (max_requests) is on, as in production."""

import os

wsgi_app = "app:application"
workers = int(os.environ.get("SOAK_WORKERS", "4"))
threads = int(os.environ.get("SOAK_THREADS", "4"))
worker_class = "gthread"
max_requests = int(os.environ.get("SOAK_MAX_REQUESTS", "400"))
max_requests_jitter = max_requests // 5
graceful_timeout = 30
timeout = 60
preload_app = False
accesslog = None
loglevel = "warning"


def on_starting(server: object) -> None:
    # Import the heavy modules once in the master (no threads, nothing opened), so a worker that
    # gunicorn forks (at start, on reload, on max_requests recycling) inherits them instead of
    # importing MLflow on its exporter thread while it serves its first requests.
    import mlflow  # noqa: F401

    import tracked_openai.sinks.mlflow
    import tracked_openai.sinks.traces  # noqa: F401


def post_fork(server: object, worker: object) -> None:
    # The exporter's start-up (MLflow import, store) off the request path: AppConfig.ready's job
    # in a real project.
    import tracked_openai

    tracked_openai.start(wait=False)
