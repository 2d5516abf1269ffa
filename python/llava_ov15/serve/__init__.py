"""OpenAI-compatible server and web demo: `python -m llava_ov15.serve --model DIR --port 8000`.

FastAPI and uvicorn are optional dependencies (`pip install 'llava-ov15[serve]'`), imported only
when the server is built. The model side is `llava_ov15.model.load_pipeline`; concurrent requests
are batched by `scheduler.Scheduler`.
"""

from __future__ import annotations

SERVE_EXTRA_HINT = "pip install 'llava-ov15[serve]'"


def require_serve_deps() -> None:
    """Fail with one clear line when FastAPI/uvicorn are missing."""
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"the server needs {' and '.join(missing)}: {SERVE_EXTRA_HINT}")
