"""The HTTP API's request bodies, as pydantic models: types, defaults and the bounds that hold
for any server. Bounds a server sets for itself (prompt size, tokens, samples) are checked where
the request is served, against its ``Limits``. These models also make the OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from chargen.music.tunes import TUNE_CAP, TUNE_TEMPERATURE

_STRICT = ConfigDict(extra="ignore", allow_inf_nan=False)


class CompletionRequest(BaseModel):
    """OpenAI's text completion request (``POST /v1/completions``), with ``top_k`` added."""

    model_config = _STRICT

    model: str = Field(description="A run the server has loaded (GET /v1/models).")
    prompt: str | list[str] = Field("", description="Text to continue; a list gives each one.")
    max_tokens: int | None = Field(16, ge=1, description="Tokens to write per completion.")
    temperature: float | None = Field(1.0, ge=0, le=100, description="0 is greedy.")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    n: int | None = Field(1, ge=1, description="Completions per prompt.")
    stop: str | list[str] | None = Field(None, description="Up to 4 texts that end a completion.")
    seed: int | None = Field(None, description="The same seed gives the same completion.")
    stream: bool | None = Field(False, description="Server-sent events in OpenAI's chunk format.")
    stream_options: dict | None = None
    user: str | None = None


class TunesRequest(BaseModel):
    """Complete ABC tunes from a tune model (``POST /v1/tunes``)."""

    model_config = _STRICT

    model: str
    num: int = Field(1, ge=1, description="Tunes to write.")
    meter: str | None = Field(None, max_length=16, description="M: of every tune, e.g. 6/8.")
    key: str | None = Field(None, max_length=16, description="K: of every tune, e.g. D or Ador.")
    rhythm: str | None = Field(None, max_length=16, description="R: of every tune, e.g. jig.")
    style: str | None = Field(None, max_length=32, description="O: (tradition), e.g. irish.")
    bars: int | None = Field(None, ge=1, le=256, description="Bars of music in every tune.")
    parts: int | None = Field(None, ge=1, le=8, description="Parts (ended by :| or ||).")
    free: bool = Field(False, description="No grammar: tunes may break their bars.")
    prime: str = Field("", max_length=2000, description="Header lines and opening notes.")
    temperature: float = Field(TUNE_TEMPERATURE, ge=0, le=100)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    valid_only: bool = Field(False, description="Resample tunes that fail the check.")
    length: int = Field(TUNE_CAP, ge=1, description="Most tokens a tune may have.")


class ScoreRequest(BaseModel):
    model_config = _STRICT

    model: str
    text: str


class IdentifyRequest(BaseModel):
    model_config = _STRICT

    text: str
    models: list[str] | None = Field(None, description="Runs to compare (default: all).")
