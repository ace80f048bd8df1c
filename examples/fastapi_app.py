"""Mount the reports API into your own FastAPI app (extra ``tracked-openai[api]``).

    uvicorn fastapi_app:app          # from the examples folder; docs at /docs

Run as a script, it serves on a free loopback port, calls its own endpoints and stops.
"""

import json
import threading
import time
import urllib.request

from fastapi import FastAPI

import tracked_openai
from tracked_openai import OpenAI, track
from tracked_openai.contrib.fastapi import create_router

app = FastAPI()
app.include_router(create_router())  # GET /api/v1/mlflow/tracking/{experiments,runs,metrics,health}/


@app.post("/summaries")
def summarise(text: str) -> dict:
    with track("crs_analysis", "summary"):
        r = OpenAI().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    return {"summary": r.choices[0].message.content}


if __name__ == "__main__":
    import uvicorn
    from _offline import offline_openai

    with offline_openai():
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            request = urllib.request.Request(f"{base}/summaries?text=Summarise+CRS-4.2", method="POST")
            print(json.loads(urllib.request.urlopen(request).read())["summary"])
            tracked_openai.flush()
            body = json.loads(urllib.request.urlopen(f"{base}/api/v1/mlflow/tracking/metrics/?feature=crs_analysis").read())
            metrics = body["metrics"]
            print("crs_analysis runs:", metrics["total_runs"], "total cost:", metrics["total_cost"])
        finally:
            server.should_exit = True
            thread.join(10)
