"""The FastAPI application: OpenAI-compatible chat completions over a loaded `Pipeline`.

Routes: `POST /v1/chat/completions` (JSON or, with `stream: true`, server-sent events in
OpenAI's chunk format ending with `data: [DONE]`), `GET /v1/models`, `GET /health`, and with
`ui=True` the web demo at `/`. Every refusal is a JSON `{"error": {...}}` with a 4xx status.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at
# runtime, and `Request` is imported inside `create_app` (FastAPI stays an optional dependency).
import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import RequestError, error_body
from .images import load_image_url
from .protocol import ChatCompletionRequest
from .scheduler import Job, Scheduler


@dataclass
class ServeConfig:
    model_name: str
    image_roots: tuple[Path, ...] = ()
    ui: bool = False
    max_batch: int = 8
    max_tokens_limit: int = 2048
    max_images: int = 8
    gather_ms: float = 10.0
    max_queue: int = 256


def _to_messages(req: ChatCompletionRequest, cfg: ServeConfig) -> list[dict]:
    """OpenAI messages -> pipeline messages with decoded images (after the cheap checks)."""
    n_images = sum(1 for m in req.messages if not isinstance(m.content, str)
                   for p in m.content if p.type == "image_url")
    if n_images > cfg.max_images:
        raise RequestError(f"{n_images} images in the request; this server takes at most "
                           f"{cfg.max_images} (--max-images)", code="too_many_images",
                           param="messages")
    out = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        for j, p in enumerate(m.content):
            if p.type == "text":
                parts.append({"type": "text", "text": p.text})
            else:
                what = f"messages[{i}].content[{j}].image_url"
                im = load_image_url(p.image_url.url, cfg.image_roots, what)
                parts.append({"type": "image", "image": im})
        out.append({"role": m.role, "content": parts})
    return out


def prepare(pipe, req: ChatCompletionRequest, cfg: ServeConfig) -> tuple[dict, int]:
    """Validate and encode one request -> (processor output, max new tokens). Blocking."""
    if req.model is not None and req.model != cfg.model_name:
        raise RequestError(f"model {req.model!r} not found; this server serves "
                           f"{cfg.model_name!r}", code="model_not_found", param="model",
                           status=404)
    limit = req.token_limit()
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if limit is not None and limit > cfg.max_tokens_limit:
        raise RequestError(f"{param}={limit} is over this server's limit of "
                           f"{cfg.max_tokens_limit} (--max-tokens-limit)", param=param,
                           code="max_tokens_too_large")
    messages = _to_messages(req, cfg)
    try:
        enc = pipe.encode(messages)
    except ValueError as e:  # e.g. an image with an aspect ratio over 200
        raise RequestError(f"messages: {e}", param="messages", code="invalid_image") from None
    n, ctx = len(enc["input_ids"]), pipe.model.config.text.max_position_embeddings
    if n >= ctx or (limit is not None and n + limit > ctx):
        want = f" + {param} {limit}" if limit is not None else ""
        raise RequestError(f"the prompt is {n} tokens{want}, over the model's context of {ctx}",
                           param="messages", code="context_length_exceeded")
    return enc, limit if limit is not None else min(cfg.max_tokens_limit, ctx - n)


def _chunk(rid: str, created: int, model: str, delta: dict, finish: str | None = None) -> str:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def _validation_message(errors: list[dict]) -> tuple[str, str | None, str]:
    e = errors[0]
    if e.get("type") == "json_invalid":
        return f"invalid JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}", None, \
            "invalid_json"
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if not loc:  # not a JSON object at all (or sent without a JSON content type)
        return "the request body must be a JSON object (Content-Type: application/json)", None, \
            "invalid_json"
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    if e.get("type") == "extra_forbidden":
        msg = "unknown field (not supported by this server)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{param or 'body'}: {msg}{more}", param, e.get("type", "invalid_value")


def create_app(pipe, cfg: ServeConfig):
    """A FastAPI app serving `pipe`; its scheduler runs between app startup and shutdown."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    scheduler = Scheduler(pipe, cfg.max_batch, cfg.gather_ms / 1000, cfg.max_queue)
    started = int(time.time())
    ctx_len = pipe.model.config.text.max_position_embeddings

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    # The interactive docs load their scripts from a CDN, useless on an offline machine.
    app = FastAPI(title="llava-ov15", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler, app.state.config = scheduler, cfg

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        msg, param, code = _validation_message(list(exc.errors()))
        return JSONResponse(error_body(msg, param=param, code=code), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), code=f"http_{exc.status_code}"),
                            status_code=exc.status_code, headers=exc.headers)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg.model_name, "active": scheduler.active,
                **scheduler.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model",
                                            "created": started, "owned_by": "llava-ov15",
                                            "max_model_len": ctx_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        enc, max_tokens = await run_in_threadpool(prepare, pipe, body, cfg)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        temperature = body.temperature or 0.0
        job = Job(enc["input_ids"], enc["pixel_values"], enc["image_grid_thw"], max_tokens,
                  sink=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                  temperature=temperature, top_p=body.top_p, seed=body.seed,
                  stops=body.stop_list())
        if not scheduler.submit(job):
            raise RequestError("server busy: too many requests waiting; retry later",
                               type="server_error", code="overloaded", status=503)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = lambda: {"prompt_tokens": len(job.prompt_ids),  # noqa: E731
                         "completion_tokens": len(job.tokens),
                         "total_tokens": len(job.prompt_ids) + len(job.tokens)}
        if body.stream:
            with_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def sse():
                try:
                    yield _chunk(rid, created, cfg.model_name, {"role": "assistant",
                                                                "content": ""})
                    while True:
                        kind, value = await events.get()
                        if kind == "delta":
                            yield _chunk(rid, created, cfg.model_name, {"content": value})
                        elif kind == "done":
                            yield _chunk(rid, created, cfg.model_name, {}, value)
                            if with_usage:
                                yield "data: " + json.dumps({
                                    "id": rid, "object": "chat.completion.chunk",
                                    "created": created, "model": cfg.model_name,
                                    "choices": [], "usage": usage()}) + "\n\n"
                            break
                        else:
                            yield "data: " + json.dumps(error_body(value, "server_error")) + "\n\n"
                            break
                    yield "data: [DONE]\n\n"
                finally:  # also on a client disconnect, which cancels this generator
                    scheduler.cancel(job)

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)
                    continue
                if kind == "done":
                    break
                if kind == "error":
                    raise RequestError(value, type="server_error", code="generation_failed",
                                       status=500)
        finally:
            scheduler.cancel(job)
        return {"id": rid, "object": "chat.completion", "created": created,
                "model": cfg.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": job.sent},
                             "finish_reason": value}],
                "usage": usage()}

    if cfg.ui:
        static = resources.files(__package__) / "static"
        page = (static / "index.html").read_text(encoding="utf-8")
        script = (static / "app.js").read_text(encoding="utf-8")

        @app.get("/", response_class=HTMLResponse)
        async def index():
            return page

        @app.get("/app.js")
        async def app_js():
            return Response(script, media_type="text/javascript")

    return app
