"""``medsum serve``: the summariser over HTTP (FastAPI + uvicorn).

    GET  /health      {"status": "ok", "run", "method", "model", "batches", "requests"}
    POST /summarize   {"text": str} -> {"summary": str};  {"texts": [str, ...]} -> {"summaries": [str, ...]}
                      optional generation settings: num_beams, max_new_tokens, min_new_tokens, length_penalty,
                      no_repeat_ngram_size (declared with their bounds in medsum.config.GenerateConfig)
    GET  /docs        the OpenAPI page

Bad input is a 4xx with a JSON {"detail": ...}, never a 500: bodies over the limit are refused (413) before they
are held in memory, from the declared Content-Length or by counting the bytes that actually arrive (a chunked or
lying body). Requests that arrive within a few milliseconds of each other share one generate() call, run in a
worker thread so that the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from medsum.errors import MedsumError
from medsum.serve.summarizer import GENERATION_BOUNDS, Summarizer, checked_texts

BATCH_WINDOW_SECONDS = 0.01
MAX_TEXTS_PER_GENERATE = 64
log = logging.getLogger("medsum.serve")


class _Texts(BaseModel):
    """Exactly one of ``text`` and ``texts``, plus optional generation settings."""

    # strict: "4" is not a number of beams; forbid: a misspelt setting is an error, not silently ignored
    model_config = ConfigDict(strict=True, extra="forbid")

    text: str | None = Field(None, description="One text to summarise.")
    texts: list[str] | None = Field(None, description="Several texts, summarised together.")

    def overrides(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in GENERATION_BOUNDS if getattr(self, key) is not None}


# the generation settings as optional fields, each typed and described as config.GenerateConfig declares it
SummarizeRequest = create_model("SummarizeRequest", __base__=_Texts, __doc__=_Texts.__doc__, **{
    key: (bound.kind | None, Field(None, description=f"{bound.describe()}; default: the run's generate.{key}"))
    for key, bound in GENERATION_BOUNDS.items()})


class SummaryResponse(BaseModel):
    summary: str


class SummariesResponse(BaseModel):
    summaries: list[str]


def request_texts(request: SummarizeRequest, max_texts: int) -> list[str]:
    if (request.text is None) == (request.texts is None):
        raise MedsumError('give exactly one of "text" (a string) and "texts" (a list of strings)')
    texts = [request.text] if request.text is not None else request.texts
    if not texts:
        raise MedsumError('"texts" is empty')
    if len(texts) > max_texts:
        raise MedsumError(f'"texts" holds {len(texts)} texts; at most {max_texts} per request')
    return checked_texts(texts)


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
                 max_texts: int = MAX_TEXTS_PER_GENERATE):
        self.summarizer = summarizer
        self.window = window
        self.max_texts = max_texts
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0
        self.requests = 0

    async def submit(self, texts: list[str], settings: dict[str, Any]) -> list[str]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(texts, settings, future))
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
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        try:
            summaries = await asyncio.to_thread(self.summarizer.generate, texts, jobs[0].settings)
        except Exception as err:  # a failed generate answers its requests with an error; the service goes on
            log.exception("generation failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
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


def create_app(summarizer: Summarizer, max_body_bytes: int = 1_000_000, max_texts: int = 16):
    """The FastAPI application serving ``summarizer``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    batcher = Batcher(summarizer, max_texts=max(MAX_TEXTS_PER_GENERATE, max_texts))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run_forever())
        yield
        task.cancel()

    cfg = summarizer.cfg
    app = FastAPI(title="medsum", lifespan=lifespan,
                  description=f"Summaries from run {cfg.run_name} ({cfg.method.name} on {cfg.model.name}).")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(MedsumError)
    async def refuse(request: Request, err: MedsumError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(err)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input: up to a megabyte back, and a 500 when it is not UTF-8
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(err).__name__}: {err}"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "run": cfg.run_name, "method": cfg.method.name, "model": cfg.model.name,
                "batches": batcher.batches, "requests": batcher.requests}

    @app.post("/summarize", response_model=SummaryResponse | SummariesResponse,
              responses={413: {"description": "body too large"}, 422: {"description": "invalid request"}})
    async def summarize(request: SummarizeRequest) -> dict:
        texts = request_texts(request, max_texts)
        summaries = await batcher.submit(texts, summarizer.generation_settings(**request.overrides()))
        return {"summary": summaries[0]} if request.text is not None else {"summaries": summaries}

    return app


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int = 1_000_000,
          max_texts: int = 16) -> None:
    """Loads the run and serves it until interrupted."""
    import uvicorn

    from medsum.serve.summarizer import load_summarizer

    if max_body_bytes < 1:
        raise MedsumError(f"--max-body-bytes must be >= 1, got {max_body_bytes}")
    if max_texts < 1:
        raise MedsumError(f"--max-texts must be >= 1, got {max_texts}")
    if not 0 <= port <= 65535:
        raise MedsumError(f"--port must be in [0, 65535], got {port}")
    app = create_app(load_summarizer(run), max_body_bytes=max_body_bytes, max_texts=max_texts)
    print(f"serving {run} on http://{host}:{port} (API docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
