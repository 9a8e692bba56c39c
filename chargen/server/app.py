"""``chargen serve``'s application: an HTTP API over the Python API, and the web page.

- ``GET /v1/models``, ``POST /v1/completions``: OpenAI's text completion API (streamed as
  server-sent events in OpenAI's chunk format when asked), so its clients work unchanged;
- ``POST /v1/tunes`` (tunes with their validity and a MIDI file by URL), ``POST /v1/score``,
  ``POST /v1/identify``, ``GET /health``, and the OpenAPI schema at ``/openapi.json``;
- ``/``: the page where text streams in and tunes are seen and heard.

Completions and tunes of one model run on one engine with continuous batching
(``chargen.server.batching``). Every request is bounded (``Limits``): a request past a bound is a
400, a server with no room a 429, every error a JSON object in OpenAI's shape, never a
traceback. The server writes nothing into the checkpoint directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import secrets
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from chargen import __version__
from chargen.api import Model, identify, is_valid
from chargen.config import SampleConfig
from chargen.errors import ChargenError, MusicError, UsageError
from chargen.generation.engine import Sequence
from chargen.generation.sampling import sequence_key
from chargen.generation.text import TextControl, prime_ids
from chargen.music.check import check_tune, music21_available
from chargen.music.tunes import Tune, generate_valid_tunes, numbered, tune_request, tune_sequences
from chargen.server import assets, sounds
from chargen.server.batching import Batcher, Busy, Job
from chargen.server.schemas import CompletionRequest, IdentifyRequest, ScoreRequest, TunesRequest

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server, and what the server takes at once."""

    prompt_chars: int = 20_000  # a prompt (each, when several)
    max_tokens: int = 4_096  # tokens of one completion
    choices: int = 16  # completions of one request (prompts times n)
    tunes: int = 20  # tunes of one request
    tune_tokens: int = 2_000  # tokens of one tune
    text_chars: int = 1_000_000  # text to score or identify
    rows: int = 256  # sequences in flight per model
    requests: int = 512  # requests in flight in all
    seconds: float = 120.0  # time one request may take
    body_bytes: int = 1 << 20  # size of a request body


class ApiError(Exception):
    """An error to answer with: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **more):
        super().__init__(message)
        self.status, self.kind, self.more = status, kind, more

    def response(self) -> JSONResponse:
        body = {"message": str(self), "type": self.kind, "param": None, "code": None}
        return JSONResponse({"error": body | self.more}, status_code=self.status)


class Server:
    """The state behind the routes: models and their batchers, limits, recent tunes."""

    def __init__(self, models: dict[str, Model], limits: Limits, api_key: str | None, cache):
        self.models, self.limits, self.api_key = models, limits, api_key
        self.batchers = {name: Batcher(m.engine, limits.rows, name) for name, m in models.items()}
        self.in_flight = 0
        self.tunes: collections.OrderedDict[str, str] = collections.OrderedDict()  # id -> ABC
        self.cache = cache  # where abcjs is kept; None: no page assets

    def model(self, name: str) -> Model:
        if name not in self.models:
            known = ", ".join(self.models) or "none"
            raise ApiError(404, f"no model {name!r}; models: {known}", code="model_not_found")
        return self.models[name]

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()

    # ------------------------------------------------------------------ completions

    def completion_job(self, request: CompletionRequest, loop) -> tuple[Job, list[int]]:
        """The job of a completion request, one sequence per prompt and choice, and each
        prompt's token count."""
        model, limits = self.model(request.model), self.limits
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        n, max_tokens = request.n or 1, request.max_tokens or 16
        _bound("max_tokens", max_tokens, limits.max_tokens)
        _bound("number of completions (prompts x n)", n * len(prompts), limits.choices)
        _bound("number of stop texts", len(stops), 4)
        if not prompts or any(len(p) > limits.prompt_chars for p in prompts):
            raise ApiError(
                400,
                f"give 1 to {limits.choices} prompts of at most {limits.prompt_chars:,} characters",
            )
        config = SampleConfig(
            max_tokens,
            _or(request.temperature, 1.0),
            request.top_k,
            _or(request.top_p, 1.0),
            n * len(prompts),
            request.seed,
        )
        config.validate()
        job = Job([], loop, decode=model.tokenizer.decode)
        prompt_ids = [prime_ids(model.tokenizer, p) for p in prompts]
        for index in range(n * len(prompts)):
            # A control decodes each token as it comes, which only stop texts need; the rest
            # is decoded a batch of tokens at a time when it is handed over.
            control = None
            if stops:
                control = TextControl(model.tokenizer, stops, lambda t, i=index: job.emit(i, t))
            key = sequence_key(request.seed, index)
            job.sequences.append(Sequence(prompt_ids[index // n], max_tokens, config, key, control))
        counted = [len(ids) if p else 0 for ids, p in zip(prompt_ids, prompts, strict=True)]
        return job, counted

    async def run_job(self, name: str, job: Job, request: Request | None = None):
        """The job's events as they come, until it is over; the job leaves the batcher if the
        client goes away or the time limit passes (ending its sequences as cancelled)."""
        batcher = self.batchers[name]
        try:
            batcher.submit(job)
        except Busy as exc:
            raise ApiError(429, f"the server is busy ({exc}); try again", "rate_limit") from None
        deadline = time.monotonic() + self.limits.seconds
        try:
            while not job.over:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    events = await asyncio.wait_for(job.events.get(), min(left, 1.0))
                except TimeoutError:
                    # Once a second, not per event: asking costs a round through the server.
                    if request is not None and await request.is_disconnected():
                        break
                    continue
                while not isinstance(events, BaseException) and not job.events.empty():
                    more = job.events.get_nowait()  # behind: send what waits as one chunk
                    events = more if isinstance(more, BaseException) else events + more
                if isinstance(events, BaseException):
                    raise ApiError(500, f"generation failed: {events}", "server_error")
                yield job.take(events)
        finally:
            if not job.over:
                batcher.cancel(job)

    # ------------------------------------------------------------------ tunes

    def tunes_blocking(self, request: TunesRequest, loop) -> list[Tune]:
        """The tunes of a request, made on the model's batcher (from a worker thread)."""
        model, limits = self.model(request.model), self.limits
        if not model.writes_tunes:
            raise ApiError(400, f"{model.name} is a text model, not a tune model")
        _bound("num", request.num, limits.tunes)
        _bound("length", request.length, limits.tune_tokens)
        spec = tune_request(
            request.prime,
            request.meter,
            request.key,
            rhythm=request.rhythm,
            style=request.style,
            bars=request.bars,
            parts=request.parts,
            free=request.free,
        )
        config = SampleConfig(
            request.length,
            request.temperature,
            request.top_k,
            request.top_p,
            request.num,
            request.seed,
        )

        def generate(config: SampleConfig, first: int) -> list[Tune]:
            job = Job(tune_sequences(model.tokenizer, config, spec, first), loop)
            asyncio.run_coroutine_threadsafe(_drain(self.run_job(model.name, job)), loop).result()
            if not job.over:
                raise ApiError(504, f"the tunes took longer than {limits.seconds:g}s")
            return [s.control.tune(s) for s in job.sequences]

        tunes = (
            generate_valid_tunes(generate, config, is_valid)
            if request.valid_only
            else generate(config, 0)
        )
        parse = music21_available()
        return [
            replace(t, check=check_tune(t.text, i, parse)) for i, t in enumerate(numbered(tunes), 1)
        ]

    def remember(self, abc: str) -> str:
        """An id for a tune's MIDI URL; the last 2,000 tunes are kept."""
        tune_id = hashlib.sha256(abc.encode()).hexdigest()[:20]
        self.tunes[tune_id] = abc
        self.tunes.move_to_end(tune_id)
        while len(self.tunes) > 2_000:
            self.tunes.popitem(last=False)
        return tune_id


async def _drain(events) -> None:
    async for _ in events:
        pass


def _bound(what: str, value: int, limit: int) -> None:
    if value > limit:
        raise ApiError(400, f"{what} is {value:,}; this server allows at most {limit:,}")


def _or(value, default):
    return default if value is None else value


def completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


# ---------------------------------------------------------------------------- the app


def create_app(
    models: dict[str, Model],
    limits: Limits = Limits(),
    api_key: str | None = None,
    cache: Path | None = None,
) -> FastAPI:
    """The application serving ``models`` (run name to loaded model). ``cache`` is where the
    page's abcjs is kept (fetched there on first use); None serves the page without it."""
    server = Server(models, limits, api_key, cache)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.close()  # the batchers' threads

    app = FastAPI(
        title="chargen",
        version=__version__,
        description="Text completions (OpenAI-compatible), folk tunes, scores and rankings.",
        docs_url=None,  # the interactive docs load scripts from a CDN: not here
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    _errors(app)
    app.add_middleware(_Guard, server=server)
    _routes(app, server)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(ChargenError)
    async def chargen_error(request: Request, exc: ChargenError):
        if isinstance(exc, UsageError):
            return ApiError(400, str(exc)).response()
        if isinstance(exc, MusicError):  # a tune music21 cannot take
            return ApiError(422, str(exc)).response()
        return ApiError(500, str(exc), "server_error").response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid body"
        return ApiError(400, message, param=where or None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return ApiError(500, f"internal error ({type(exc).__name__})", "server_error").response()


class _Guard:
    """API key, body size and JSON, and the number of requests in flight, checked before any
    route runs. Plain ASGI: a middleware class of the web framework's own wraps every chunk of
    a streamed response, which cost more than the rest of serving it."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        server, post = self.server, scope["method"] == "POST"
        refusal = None
        if (
            scope["path"].startswith("/v1/")
            and server.api_key
            and not _authorized(scope, server.api_key)
        ):
            refusal = ApiError(
                401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error"
            )
        elif post and server.in_flight >= server.limits.requests:
            refusal = ApiError(429, "too many requests in flight; try again", "rate_limit")
        elif post:
            body, refusal = await _read_body(receive, server.limits.body_bytes)
            receive = _replay(body, receive)
        if refusal is not None:
            return await refusal.response()(scope, receive, send)
        server.in_flight += post
        try:
            await self.app(scope, receive, send)
        finally:
            server.in_flight -= post


def _authorized(scope, key: str) -> bool:
    given = dict(scope["headers"]).get(b"authorization", b"")
    return hmac.compare_digest(given, f"Bearer {key}".encode())


async def _read_body(receive, limit: int) -> tuple[bytes, ApiError | None]:
    """The whole body, or why it cannot be served (too big, not JSON, nested too deep)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", ApiError(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", ApiError(413, f"the request body is over {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return body, ApiError(
            400, "the body is not JSON (UTF-8, not nested past the parser's limit)"
        )
    return body, None


def _replay(body: bytes, receive):
    """A ``receive`` that gives the body read already, then the connection's own messages (its
    disconnect, which a streamed response watches for)."""
    given = False

    async def replayed():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _routes(app: FastAPI, server: Server) -> None:
    _page_routes(app, server)
    _text_routes(app, server)
    _tune_routes(app, server)


def _page_routes(app: FastAPI, server: Server) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/assets/abcjs.js", include_in_schema=False)
    async def abcjs():
        if server.cache is None:
            raise ApiError(404, "this server serves the page without abcjs")
        try:
            path = await run_in_threadpool(assets.abcjs_file, server.cache)
        except assets.AssetError as exc:
            raise ApiError(503, f"abcjs is not available: {exc}", "server_error") from None
        return FileResponse(path, media_type="text/javascript")

    @app.get("/assets/soundfont/{instrument}-mp3/{note}.mp3", include_in_schema=False)
    async def note(instrument: str, note: str):
        number = sounds.midi_number(note)
        if number is None:
            raise ApiError(404, f"no note {note!r}")
        return Response(sounds.note_wav(number), media_type="audio/wav")

    @app.get("/health")
    async def health():
        """Whether the server runs, what it serves and how busy it is."""
        return {
            "status": "ok",
            "version": __version__,
            "models": list(server.models),
            "requests_in_flight": server.in_flight,
            "rows_in_flight": {name: b.rows for name, b in server.batchers.items()},
            "auth": server.api_key is not None,
        }

    @app.get("/v1/models")
    async def models():
        """The runs this server has loaded, OpenAI's list shape (with chargen's own fields)."""
        return {"object": "list", "data": [_model_card(m) for m in server.models.values()]}


def _model_card(model: Model) -> dict:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.run.info.get("created") or 0),
        "owned_by": "chargen",
        "level": model.level,
        "writes_tunes": model.writes_tunes,
    }


def _text_routes(app: FastAPI, server: Server) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        """Continue a prompt: OpenAI's text completion API (``stream`` as server-sent
        events), with ``top_k`` added."""
        job, prompt_tokens = server.completion_job(body, asyncio.get_running_loop())
        reply = _Reply(body.model, len(job.sequences), prompt_tokens)
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            events = server.run_job(body.model, job)  # the response sees a disconnect itself
            return StreamingResponse(
                reply.stream(events, job, usage), media_type="text/event-stream"
            )
        async for events in server.run_job(body.model, job, request):
            reply.add(events)
        if not job.over:
            raise ApiError(504, f"the completion took longer than {server.limits.seconds:g}s")
        return reply.whole(job)

    @app.post("/v1/score")
    async def score(body: ScoreRequest):
        """How well a model predicts a text: nats per token, bits per character, perplexity."""
        model = server.model(body.model)
        _bound("text length", len(body.text), server.limits.text_chars)
        result = await run_in_threadpool(model.score, body.text)
        return {"model": model.name, **result.as_dict()}

    @app.post("/v1/identify")
    async def identify_text(body: IdentifyRequest):
        """Models ranked by how likely they find a text, with a confidence each."""
        _bound("text length", len(body.text), server.limits.text_chars)
        chosen = [server.model(name) for name in (body.models or list(server.models))]
        ranked = await run_in_threadpool(identify, body.text, chosen)
        return {
            "ranking": [
                {"model": r.name, "confidence": r.confidence, **r.score.as_dict()} for r in ranked
            ]
        }


def _tune_routes(app: FastAPI, server: Server) -> None:
    @app.post("/v1/tunes")
    async def tunes(body: TunesRequest):
        """Complete ABC tunes: each with its validity, bars, whether the model ended it, and
        a MIDI file by URL."""
        loop = asyncio.get_running_loop()
        made = await run_in_threadpool(server.tunes_blocking, body, loop)
        return {
            "model": body.model,
            "tunes": [_tune_card(server, t, i) for i, t in enumerate(made)],
        }

    @app.get("/v1/tunes/{tune_id}/midi")
    async def midi(tune_id: str):
        """A tune of a recent ``/v1/tunes`` answer as a standard MIDI file."""
        abc = server.tunes.get(tune_id)
        if abc is None:
            raise ApiError(404, "no such tune (only the last 2,000 tunes are kept)")
        if not music21_available():
            raise ApiError(
                503, "MIDI needs music21 on the server: pip install music21", "server_error"
            )
        data = await run_in_threadpool(_midi_bytes, abc)
        headers = {"Content-Disposition": f'attachment; filename="tune-{tune_id[:8]}.mid"'}
        return Response(data, media_type="audio/midi", headers=headers)


def _tune_card(server: Server, tune: Tune, index: int) -> dict:
    check = tune.check
    return {
        "index": index,
        "abc": tune.text,
        "valid": tune.valid,
        "problems": check.problems if check else [],
        "bars": check.bars if check else None,
        "ended": tune.ended,
        "tokens": tune.tokens,
        "attempts": tune.attempts,
        "midi_url": f"/v1/tunes/{server.remember(tune.text)}/midi",
    }


def _midi_bytes(abc: str) -> bytes:
    from chargen.music.export import write_midi

    with tempfile.TemporaryDirectory() as scratch:
        return write_midi(abc, Path(scratch) / "tune.mid").read_bytes()


class _Reply:
    """A completion's answer, assembled from the job's events: whole, or as OpenAI's chunks."""

    def __init__(self, model: str, choices: int, prompt_tokens: list[int]):
        self.id, self.created, self.model = completion_id(), int(time.time()), model
        self.texts = [[] for _ in range(choices)]
        self.reasons: list[str | None] = [None] * choices
        self.prompt_tokens = sum(prompt_tokens)

    def add(self, events) -> None:
        for event in events:
            self.texts[event.index].append(event.text)
            if event.finish_reason:
                self.reasons[event.index] = _finish(event.finish_reason)

    def usage(self, job: Job) -> dict:
        completion = sum(len(s.ids) for s in job.sequences)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def whole(self, job: Job) -> dict:
        choices = [
            {"text": "".join(text), "index": i, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(self.texts, self.reasons, strict=True))
        ]
        return self._object(choices) | {"usage": self.usage(job)}

    async def stream(self, events, job: Job, usage: bool):
        try:
            async for batch in events:
                yield _sse(self._object(self._choices(batch)))
            if usage:
                yield _sse(self._object([]) | {"usage": self.usage(job)})
            yield "data: [DONE]\n\n"
        except ApiError as exc:
            yield _sse({"error": {"message": str(exc), "type": exc.kind}})

    @staticmethod
    def _choices(batch) -> list[dict]:
        """One chunk entry per choice that has news: its text of the step and, if it ended,
        why."""
        merged: dict[int, dict] = {}
        for event in batch:
            empty = {"text": "", "index": event.index, "logprobs": None, "finish_reason": None}
            choice = merged.setdefault(event.index, empty)
            choice["text"] += event.text
            choice["finish_reason"] = _finish(event.finish_reason) or choice["finish_reason"]
        return list(merged.values())

    def _object(self, choices: list) -> dict:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def _finish(reason: str | None) -> str | None:
    """OpenAI's finish reasons: a time limit or a cancelled sequence counts as "length"."""
    return None if reason is None else ("stop" if reason == "stop" else "length")


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
