# The official MLflow image lacks a PostgreSQL driver; add psycopg2. Both versions come from .env
# through compose.yaml's build args (no defaults here, so nothing can pin a second value).
ARG MLFLOW_VERSION
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
ARG PSYCOPG2_VERSION
RUN pip install --no-cache-dir "psycopg2-binary==${PSYCOPG2_VERSION}"
