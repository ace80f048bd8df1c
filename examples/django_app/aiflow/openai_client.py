"""One tracked client for the project (OPENAI_API_KEY / OPENAI_BASE_URL from the environment),
made on first use so each worker process makes its own."""

import tracked_openai

_client = None


def openai_client() -> tracked_openai.OpenAI:
    global _client
    if _client is None:
        _client = tracked_openai.OpenAI()
    return _client
