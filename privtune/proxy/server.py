"""Running the proxy app with uvicorn."""

from __future__ import annotations

import sys
from typing import Any

from client_sdk._http import is_loopback
from privtune.proxy.app import create_app


def serve(model: Any, host: str = "127.0.0.1", port: int = 8001, *, api_key: str | None = None) -> None:
    """Serve ``model`` at ``http://host:port/v1`` until interrupted. Any host but loopback without
    ``api_key`` prints a warning: then anyone who reaches the port can use the model. The model's
    ``close()``, if it has one, runs when the server stops."""
    import uvicorn

    if not is_loopback(host) and api_key is None:
        print(
            f"WARNING: the proxy listens on {host} without authentication: anyone who can reach port {port} "
            "can use this model (and your PrivTune service key). Pass --proxy-api-key, or keep the default "
            "--host 127.0.0.1.",
            file=sys.stderr,
        )
    print(f"serving {model.id} at http://{host}:{port}/v1 (OpenAI(base_url=...)); Ctrl-C to stop", file=sys.stderr)
    try:
        uvicorn.run(create_app(model, api_key=api_key), host=host, port=port, log_level="info")
    finally:
        close = getattr(model, "close", None)  # FineTunedModel: its inference session
        if close is not None:
            close()
