"""``chargen serve``: the HTTP API against a real server on 127.0.0.1, with real clients (httpx,
and OpenAI's own Python client), many at once."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from chargen.server import assets  # noqa: E402
from tests.server_helpers import live_server, train_runs  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def url(runs):
    with live_server(runs) as base:
        yield base


def post(url: str, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kwargs)


def events(response: httpx.Response) -> list[dict]:
    """The JSON objects of a server-sent event stream, up to [DONE] (which must end it)."""
    lines = [line for line in response.text.split("\n\n") if line.strip()]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


# ------------------------------------------------------------------------------ the API


def test_health_and_models_name_what_is_served(url):
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["models"] == ["verse", "folk"]
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list"
    cards = {m["id"]: m for m in models["data"]}
    assert cards["verse"]["writes_tunes"] is False and cards["folk"]["writes_tunes"] is True


def test_a_completion_continues_the_prompt_and_counts_its_tokens(url):
    body = {"model": "verse", "prompt": "The tide", "max_tokens": 30, "seed": 7}
    first = post(url, "/v1/completions", body).json()
    assert first["object"] == "text_completion" and len(first["choices"]) == 1
    choice = first["choices"][0]
    assert len(choice["text"]) == 30 and choice["finish_reason"] == "length"
    assert first["usage"] == {"prompt_tokens": 8, "completion_tokens": 30, "total_tokens": 38}
    assert post(url, "/v1/completions", body).json()["choices"][0]["text"] == choice["text"]


def test_stop_texts_end_a_completion(url):
    free = post(url, "/v1/completions", {"model": "verse", "max_tokens": 200, "seed": 3}).json()
    text = free["choices"][0]["text"]
    stop = text[40:43]
    stopped = post(
        url,
        "/v1/completions",
        {"model": "verse", "max_tokens": 200, "seed": 3, "stop": ["@@", stop]},
    ).json()
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_a_streamed_completion_is_openais_chunk_format_and_the_same_text(url):
    body = {"model": "verse", "prompt": "Row", "max_tokens": 25, "seed": 2, "n": 2}
    whole = post(url, "/v1/completions", body).json()
    streamed = httpx.post(f"{url}/v1/completions", json=body | {"stream": True}, timeout=60)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert {c["object"] for c in chunks} == {"text_completion"}
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
    assert [texts[0], texts[1]] == [c["text"] for c in whole["choices"]]


def test_the_official_openai_client_works_unchanged(url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert "verse" in [m.id for m in client.models.list()]
    done = client.completions.create(model="verse", prompt="The", max_tokens=20, seed=4)
    assert len(done.choices[0].text) == 20 and done.usage.completion_tokens == 20
    stream = client.completions.create(
        model="verse", prompt="The", max_tokens=20, seed=4, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == (
        done.choices[0].text
    )
    with pytest.raises(openai.NotFoundError, match="no model 'nope'"):
        client.completions.create(model="nope", prompt="x", max_tokens=3)


def test_tunes_come_with_validity_and_a_midi_file(url):
    answer = post(url, "/v1/tunes", {"model": "folk", "num": 2, "meter": "3/4", "seed": 1})
    assert answer.status_code == 200, answer.text
    tunes = answer.json()["tunes"]
    assert [t["abc"].split("\n")[0] for t in tunes] == ["X:1", "X:2"]
    assert all("M:3/4" in t["abc"] and t["ended"] and isinstance(t["valid"], bool) for t in tunes)
    free = post(url, "/v1/tunes", {"model": "folk", "num": 2, "seed": 1, "valid_only": True})
    valid = [t for t in free.json()["tunes"] if t["valid"]]
    midi = httpx.get(f"{url}{valid[0]['midi_url']}")
    if midi.status_code == 503:
        pytest.skip("music21 is not installed")
    assert midi.headers["content-type"] == "audio/midi" and midi.content.startswith(b"MThd")


def test_score_and_identify(url):
    score = post(url, "/v1/score", {"model": "verse", "text": "the keeper lit the lamp"}).json()
    assert score["model"] == "verse" and score["bits_per_char"] > 0 and score["tokens"] == 22
    ranking = post(url, "/v1/identify", {"text": "the keeper lit the lamp too soon"}).json()
    assert [r["model"] for r in ranking["ranking"]][0] == "verse"


def test_the_openapi_schema_names_every_route(url):
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {
        "/v1/models",
        "/v1/completions",
        "/v1/tunes",
        "/v1/score",
        "/v1/identify",
        "/health",
    } <= set(schema["paths"])


# ------------------------------------------------------------------------- many at once


async def stream_one(client, url, body, stop_after=None):
    """Stream a completion; the time to its first text and its text (cut short after
    ``stop_after`` chunks: the client hangs up)."""
    started = time.perf_counter()
    first, text, chunks = None, "", 0
    async with client.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}) as r:
        if r.status_code != 200:
            return None, r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            piece = "".join(c["text"] for c in json.loads(line[6:])["choices"])
            if piece and first is None:
                first = time.perf_counter() - started
            text += piece
            chunks += 1
            if stop_after is not None and chunks >= stop_after:
                break
    return first, text


def test_a_long_request_does_not_hold_up_a_short_one(url):
    ended = {}

    async def timed(client, name, body):
        await stream_one(client, url, body)
        ended[name] = time.perf_counter()

    async def race():
        async with httpx.AsyncClient(timeout=120) as client:
            long_body = {"model": "verse", "max_tokens": 4096, "n": 16, "seed": 1}
            long = asyncio.create_task(timed(client, "long", long_body))
            while not httpx.get(f"{url}/health").json()["rows_in_flight"]["verse"]:
                await asyncio.sleep(0.01)  # the long one is generating
            started = time.perf_counter()
            await timed(client, "short", {"model": "verse", "max_tokens": 20, "seed": 2})
            await long
            return ended["short"] - started

    short_took = asyncio.run(race())
    assert ended["short"] < ended["long"] and short_took < 2


def wait_for_idle(url: str, seconds: float = 10) -> dict:
    deadline = time.time() + seconds
    while True:
        health = httpx.get(f"{url}/health").json()
        if all(rows == 0 for rows in health["rows_in_flight"].values()) or time.time() > deadline:
            return health
        time.sleep(0.1)


def test_a_client_that_goes_away_frees_its_rows(url):
    async def leave():
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"model": "verse", "max_tokens": 100_000 // 100_000 * 4000, "n": 4}
            await stream_one(client, url, body, stop_after=3)

    asyncio.run(leave())
    assert wait_for_idle(url, 5)["rows_in_flight"] == {"verse": 0, "folk": 0}


def test_two_hundred_clients_at_once_some_leaving_and_the_server_still_answers(url):
    async def crowd():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=300)) as c:
            jobs = [
                stream_one(
                    c,
                    url,
                    {"model": "verse", "max_tokens": 40, "seed": i},
                    stop_after=2 if i % 5 == 0 else None,
                )
                for i in range(200)
            ]
            return await asyncio.gather(*jobs)

    results = asyncio.run(crowd())
    finished = [r for i, r in enumerate(results) if i % 5 and r[0] is not None]
    assert all(len(text) == 40 for _, text in finished)
    assert len(finished) + sum(r[1] == 429 for r in results) >= 160  # served or told to wait
    health = wait_for_idle(url)
    assert health["status"] == "ok" and health["rows_in_flight"] == {"verse": 0, "folk": 0}


# ------------------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"model": "nope", "prompt": "x"}, 404, "no model 'nope'"),
        ({"model": "verse", "max_tokens": 10**30}, 400, "max_tokens"),
        ({"model": "verse", "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": "verse", "temperature": -1}, 400, "temperature"),
        ({"model": "verse", "n": 50}, 400, "number of completions"),
        ({"model": "verse", "prompt": "x" * 30_000}, 400, "characters"),
        ({"model": "verse", "prompt": "Zebra"}, 400, "never saw"),
        ({"model": "verse", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop texts"),
        ({"prompt": "x"}, 400, "model"),
        ([1, 2, 3], 400, "body"),
    ],
)
def test_bad_requests_get_a_json_error_not_a_traceback(url, body, status, fragment):
    answer = post(url, "/v1/completions", body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert fragment in error["message"] and "Traceback" not in answer.text


@pytest.mark.parametrize(
    "content, status",
    [
        (b"{not json", 400),
        (b'{"model": "verse", "prompt": "caf\xe9"}', 400),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, 400),  # nested past any parser's patience
        (b'{"prompt": "' + b"x" * (2 << 20) + b'"}', 413),
    ],
)
def test_hostile_bodies_are_refused_and_the_server_lives(url, content, status):
    answer = httpx.post(
        f"{url}/v1/completions",
        content=content,
        timeout=60,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == status and "error" in answer.json()
    assert httpx.get(f"{url}/health").status_code == 200


def test_a_tune_request_for_a_text_model_or_too_many_tunes_is_refused(url):
    assert "text model" in post(url, "/v1/tunes", {"model": "verse"}).json()["error"]["message"]
    assert post(url, "/v1/tunes", {"model": "folk", "num": 500}).status_code == 400
    assert post(url, "/v1/tunes", {"model": "folk", "meter": "banana"}).status_code == 400


def test_an_api_key_guards_the_api_but_not_the_health(runs):
    with live_server(runs, api_key="sesame") as base:
        assert httpx.get(f"{base}/v1/models").status_code == 401
        wrong = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        right = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer sesame"})
        assert right.status_code == 200
        assert httpx.get(f"{base}/health").json()["auth"] is True


def test_a_full_server_says_429(runs):
    from chargen.server.app import Limits

    with live_server(runs, limits=Limits(rows=3)) as base:
        busy = post(base, "/v1/completions", {"model": "verse", "max_tokens": 5, "n": 4})
        assert busy.status_code == 429 and "busy" in busy.json()["error"]["message"]
        assert post(base, "/v1/completions", {"model": "verse", "n": 3}).status_code == 200


def test_the_batcher_counts_rows_from_the_moment_a_job_is_admitted(runs):
    import chargen
    from chargen.config import SampleConfig
    from chargen.generation.engine import Sequence
    from chargen.server.batching import Batcher, Busy, Job

    model = chargen.load(runs / "verse")
    batcher = Batcher(model.engine, max_rows=3)
    loop = asyncio.new_event_loop()
    try:
        rows = [Sequence([1], 10_000, SampleConfig()) for _ in range(2)]
        first = Job(rows, loop)
        batcher.submit(first)
        with pytest.raises(Busy):
            batcher.submit(Job([Sequence([1], 5, SampleConfig()) for _ in range(2)], loop))
        batcher.cancel(first)
        deadline = time.time() + 10
        while batcher.rows and time.time() < deadline:
            time.sleep(0.01)
        assert batcher.rows == 0 and all(s.finish_reason == "cancelled" for s in rows)
    finally:
        batcher.close()
        loop.close()


def test_serving_writes_nothing_into_the_checkpoint_directory(url, runs):
    def listing():
        return {p: p.stat().st_mtime_ns for p in runs.rglob("*")}

    before = listing()
    post(url, "/v1/completions", {"model": "verse", "max_tokens": 5})
    post(url, "/v1/tunes", {"model": "folk", "num": 1})
    post(url, "/v1/score", {"model": "verse", "text": "the lamp"})
    assert listing() == before


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "stream",
    "num",
    "meter",
    "key",
    "text",
    "models",
    "valid_only",
    "length",
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/completions", "/v1/tunes", "/v1/score", "/v1/identify"]),
    body=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6) | JSON,
    model=st.sampled_from(["verse", "folk", None]),
)
def test_any_json_gets_an_answer_or_a_json_error_never_a_crash(url, path, body, model):
    if isinstance(body, dict) and model is not None and "model" not in body:
        body["model"] = model
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(body["max_tokens"], 50)
    answer = httpx.post(
        f"{url}{path}",
        content=json.dumps(body),
        timeout=60,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code in (200, 400, 404, 413, 429), answer.text
    if answer.status_code != 200 and "text/event-stream" not in answer.headers["content-type"]:
        assert set(answer.json()["error"]) >= {"message", "type"}


# ------------------------------------------------------------------------------ abcjs


def test_abcjs_is_taken_only_when_it_matches_its_integrity_hash(tmp_path, monkeypatch):
    import base64
    import hashlib
    import io
    import tarfile

    script = b"window.ABCJS = {};"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        member = tarfile.TarInfo(assets.ABCJS_MEMBER)
        member.size = len(script)
        archive.addfile(member, io.BytesIO(script))
    tarball = data.getvalue()
    monkeypatch.setattr(assets, "_download", lambda url, timeout: tarball)
    with pytest.raises(assets.AssetError, match="integrity"):
        assets.abcjs_file(tmp_path)  # the real hash of 6.7.2: this tarball is not it
    assert not list(tmp_path.rglob("*.js"))
    good = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    monkeypatch.setattr(assets, "ABCJS_INTEGRITY", good)
    assert assets.abcjs_file(tmp_path).read_bytes() == script


def test_without_abcjs_the_page_still_loads_and_the_asset_says_why(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARGEN_NPM_REGISTRY", "http://127.0.0.1:9")  # nothing listens there
    with live_server(runs, cache=tmp_path / "assets") as base:
        assert "<title>chargen</title>" in httpx.get(base).text
        missing = httpx.get(f"{base}/assets/abcjs.js", timeout=60)
        assert missing.status_code == 503 and "abcjs is not available" in missing.text


# ------------------------------------------------------------------------------ sounds


def test_the_page_plays_notes_the_server_synthesises(url):
    import io
    import wave

    from chargen.server.sounds import midi_number

    assert [midi_number(n) for n in ("C4", "A4", "Gb5", "Bb0", "H2", "C#4")] == [
        60,
        69,
        78,
        22,
        None,
        None,
    ]
    answer = httpx.get(f"{url}/assets/soundfont/acoustic_grand_piano-mp3/A4.mp3")
    assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(answer.content)) as sound:
        assert sound.getnchannels() == 1 and sound.getframerate() == 22_050
        assert sound.getnframes() == 2 * 22_050
    assert httpx.get(f"{url}/assets/soundfont/x-mp3/Q9.mp3").status_code == 404


def test_serve_without_names_serves_your_runs_and_the_shipped_ones(tmp_path, runs):
    from chargen.cli.serve import served_names

    root = tmp_path / "checkpoints"
    assert served_names((), root) == ["folk"]  # no runs of yours: the model that ships
    shutil.copytree(runs / "verse", root / "mine")
    shutil.copytree(runs / "folk", root / "folk")  # yours comes first, once
    assert sorted(served_names((), root)) == ["folk", "mine"]
    assert served_names(("mine",), root) == ["mine"]
