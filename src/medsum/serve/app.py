"""``medsum serve``: the summariser over HTTP (FastAPI + uvicorn).

    GET  /health      {"status": "ok", "run", "method", "model", "batches", "requests"}
    POST /summarize   {"text": str} -> {"summary": str};  {"texts": [str, ...]} -> {"summaries": [str, ...]}
                      optional generation settings: num_beams, max_new_tokens, min_new_tokens, length_penalty,
                      no_repeat_ngram_size (declared with their bounds in medsum.config.GenerateConfig)
    GET  /docs        the OpenAPI page

Bad input is a 4xx with a JSON {"detail": ...}, never a 500: bodies over the limit are refused (413) before they
are held in memory, from the declared Content-Length or by counting the bytes that actually arrive (a chunked or
lying body). Requests that arrive within a few milliseconds of each other share one generate() call, run in a
worker thread so that the event loop keeps answering meanwhile. The queue of texts waiting for generation is
bounded (``max_queue``): past it a request is answered 503 with Retry-After at once, instead of being held in
memory. The OpenAPI schema (``medsum.serve.schema``) states every rule above and every status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from medsum.errors import MedsumError
from medsum.serve.schema import RESPONSES, Health, SummariesResponse, SummaryResponse, request_model
from medsum.serve.summarizer import Summarizer, checked_texts

BATCH_WINDOW_SECONDS = 0.01
MAX_TEXTS_PER_GENERATE = 64
DEFAULT_MAX_QUEUE = 256
log = logging.getLogger("medsum.serve")


class Overloaded(Exception):  # noqa: N818 (a state of the service, answered 503)
    """More texts wait for generation than the queue may hold; ``retry_after``: seconds until it has drained."""

    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"overloaded: {queued} texts wait for generation; retry after {retry_after} s")
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------- body limit


async def send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: reads at most ``max_bytes`` of a request body, then hands it on; more is a 413.

    A declared Content-Length over the limit is refused before any byte is read (uvicorn then never sends
    "100 Continue", so curl does not even upload it).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body = await self._read_body(receive)
        if body is None:
            await self._refuse(send)
            return
        await self.app(scope, self._replay(body, receive), send)

    async def _read_body(self, receive) -> bytes | None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive):
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()  # after the body: only http.disconnect remains
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _refuse(self, send) -> None:
        await send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"})


# ---------------------------------------------------------------------------------------------- batching


@dataclass
class _Job:
    texts: list[str]
    settings: dict[str, Any]
    future: asyncio.Future


class Batcher:
    """Collects the requests that arrive within ``window`` seconds and runs one generate() per distinct setting."""

    def __init__(self, summarizer: Summarizer, window: float = BATCH_WINDOW_SECONDS,
                 max_texts: int = MAX_TEXTS_PER_GENERATE, max_queue: int = DEFAULT_MAX_QUEUE):
        self.summarizer = summarizer
        self.window = window
        self.max_texts = max_texts
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.queued_texts = 0
        self.batches = 0
        self.requests = 0
        self.seconds_per_text = 0.0  # of the last generate(), for Retry-After

    async def submit(self, texts: list[str], settings: dict[str, Any]) -> list[str]:
        """The summaries of ``texts``; raises Overloaded when the queue cannot take them."""
        if self.queued_texts + len(texts) > self.max_queue:
            wait = self.seconds_per_text * (self.queued_texts + len(texts))
            raise Overloaded(self.queued_texts, max(1, math.ceil(wait)))
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        self.queue.put_nowait(_Job(texts, settings, future))
        return await future

    async def run_forever(self) -> None:
        while True:
            jobs = await self._collect()
            for group in _by_settings(jobs):
                await self._run(group)

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        await asyncio.sleep(self.window)
        # get_nowait after a sleep, not wait_for(get()): a timed-out get may swallow a job
        while not self.queue.empty() and sum(len(job.texts) for job in jobs) < self.max_texts:
            jobs.append(self.queue.get_nowait())
        self.queued_texts -= sum(len(job.texts) for job in jobs)
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        started = time.perf_counter()
        try:
            summaries = await asyncio.to_thread(self.summarizer.generate, texts, jobs[0].settings)
        except Exception as err:  # a failed generate answers its requests with an error; the service goes on
            log.exception("generation failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        self.seconds_per_text = (time.perf_counter() - started) / len(texts)
        self.batches += 1
        self.requests += len(jobs)
        start = 0
        for job in jobs:
            if not job.future.done():  # the client may have gone away meanwhile
                job.future.set_result(summaries[start:start + len(job.texts)])
            start += len(job.texts)


def _by_settings(jobs: list[_Job]) -> list[list[_Job]]:
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(sorted(job.settings.items())), []).append(job)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------- app


def create_app(summarizer: Summarizer, max_body_bytes: int = 1_000_000, max_texts: int = 16,
               max_queue: int = DEFAULT_MAX_QUEUE):
    """The FastAPI application serving ``summarizer``."""
    from fastapi import FastAPI

    batcher = Batcher(summarizer, max_texts=max(MAX_TEXTS_PER_GENERATE, max_texts), max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run_forever())
        yield
        task.cancel()

    cfg = summarizer.cfg
    app = FastAPI(title="medsum", lifespan=lifespan,
                  description=f"Summaries from run {cfg.run_name} ({cfg.method.name} on {cfg.model.name}).")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)
    _add_routes(app, summarizer, batcher, max_texts)
    return app


def _add_error_handlers(app) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(MedsumError)
    async def refuse(request: Request, err: MedsumError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(err)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input: up to a megabyte back, and a 500 when it is not UTF-8
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(err)},
                            headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(err).__name__}: {err}"})


def _add_routes(app, summarizer: Summarizer, batcher: Batcher, max_texts: int) -> None:
    cfg = summarizer.cfg

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        return {"status": "ok", "run": cfg.run_name, "method": cfg.method.name, "model": cfg.model.name,
                "batches": batcher.batches, "requests": batcher.requests, "queued_texts": batcher.queued_texts}

    async def summarize(request) -> dict:
        single = hasattr(request, "text")
        texts = checked_texts([request.text] if single else request.texts)
        summaries = await batcher.submit(texts, summarizer.generation_settings(lower_min=True, **request.overrides()))
        return {"summary": summaries[0]} if single else {"summaries": summaries}

    summarize.__annotations__["request"] = request_model(max_texts)  # built per app: it knows --max-texts
    app.post("/summarize", response_model=SummaryResponse | SummariesResponse, responses=RESPONSES,
             summary="Summarise one text or several")(summarize)


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int = 1_000_000,
          max_texts: int = 16, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
    """Loads the run and serves it until interrupted."""
    import uvicorn

    from medsum.serve.summarizer import load_summarizer

    if max_body_bytes < 1:
        raise MedsumError(f"--max-body-bytes must be >= 1, got {max_body_bytes}")
    if max_texts < 1:
        raise MedsumError(f"--max-texts must be >= 1, got {max_texts}")
    if max_queue < max_texts:
        raise MedsumError(f"--max-queue must be >= --max-texts ({max_texts}), got {max_queue}")
    if not 0 <= port <= 65535:
        raise MedsumError(f"--port must be in [0, 65535], got {port}")
    app = create_app(load_summarizer(run), max_body_bytes=max_body_bytes, max_texts=max_texts, max_queue=max_queue)
    print(f"serving {run} on http://{host}:{port} (API docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
