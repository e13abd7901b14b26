"""The HTTP API's contract: request and response models whose OpenAPI schema states every rule the server enforces.

A request is one of two bodies (``oneOf``): ``{"text": ...}`` or ``{"texts": [...]}`` (1 to ``--max-texts`` items),
no other field but the generation settings, each with its bounds as ``minimum``/``maximum`` (declared once, in
``config.GenerateConfig``). A text must hold a non-space character (``pattern: \\S``, checked with Python's
``re`` as the schema's readers do). Each status the server answers with is documented with its body
(``RESPONSES``). Schemathesis (``schemathesis run URL/openapi.json --checks all``) holds the server to it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StringConstraints, Tag, create_model

from medsum.serve.summarizer import GENERATION_BOUNDS, RequestBound

NON_BLANK = r"\S"
Text = Annotated[str, StringConstraints(pattern=NON_BLANK)]
# strict: "4" is not a number of beams; forbid: a misspelt setting is an error, not silently ignored;
# python-re: the pattern means what it means to Python's re (and to the schema's readers), e.g. for "\x1c"
STRICT = ConfigDict(strict=True, extra="forbid", regex_engine="python-re")


def _bound_kwargs(bound: RequestBound) -> dict[str, float]:
    b = bound.bound
    kwargs = {"gt" if b.low_open else "ge": bound.kind(b.low)}
    if b.high is not None:
        kwargs["lt" if b.high_open else "le"] = bound.kind(b.high)
    return kwargs


def _setting_description(key: str, bound: RequestBound) -> str:
    text = f"{bound.describe()}; default: the run's generate.{key}"
    if key == "min_new_tokens":
        text += "; a value above the max_new_tokens in force is lowered to it"
    return text


def _integral(value: Any) -> Any:
    """6.0 is the integer 6 to JSON Schema (and to a JSON client); "6" and true stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _settings_fields() -> dict[str, Any]:
    """The generation settings as optional fields, typed and bounded as config.GenerateConfig declares them."""
    def kind(bound: RequestBound) -> Any:
        return Annotated[int, BeforeValidator(_integral)] if bound.kind is int else bound.kind

    return {key: (kind(bound), Field(None, description=_setting_description(key, bound), **_bound_kwargs(bound)))
            for key, bound in GENERATION_BOUNDS.items()}


class _Request(BaseModel):
    model_config = STRICT

    def overrides(self) -> dict[str, Any]:
        """The generation settings the request gives."""
        return {key: getattr(self, key) for key in GENERATION_BOUNDS if getattr(self, key) is not None}


def request_model(max_texts: int) -> Any:
    """The body of POST /summarize: one text, or 1 to ``max_texts`` texts (a tagged union: the schema's oneOf)."""
    one = create_model("TextRequest", __base__=_Request, __doc__="One text to summarise.",
                       text=(Text, Field(description="The text to summarise.")), **_settings_fields())
    many = create_model("TextsRequest", __base__=_Request, __doc__="Several texts, summarised together.",
                        texts=(list[Text], Field(min_length=1, max_length=max_texts,
                                                 description=f"1 to {max_texts} texts (--max-texts).")),
                        **_settings_fields())
    return Annotated[Union[Annotated[one, Tag("text")], Annotated[many, Tag("texts")]],  # noqa: UP007
                     Discriminator(_which_body)]


def _which_body(body: Any) -> Literal["text", "texts"]:
    """A body with "texts" is a TextsRequest (a "text" beside it is then an unknown field); any other, a
    TextRequest."""
    keys = body if isinstance(body, dict) else vars(body) if isinstance(body, BaseModel) else {}
    return "texts" if "texts" in keys else "text"


class SummaryResponse(BaseModel):
    summary: str


class SummariesResponse(BaseModel):
    summaries: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    run: str
    method: str
    model: str
    batches: int = Field(description="generate() calls so far")
    requests: int = Field(description="requests answered so far")
    queued_texts: int = Field(description="texts waiting for generation now")


class Problem(BaseModel):
    detail: str


class Issue(BaseModel):
    loc: list[Union[str, int]]  # noqa: UP007
    msg: str
    type: str


class Invalid(BaseModel):
    detail: Union[str, list[Issue]]  # noqa: UP007


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "a body that cannot be parsed at all"},
    413: {"model": Problem, "description": "a body larger than --max-body-bytes"},
    422: {"model": Invalid, "description": "a body that breaks the schema: not JSON, not an object, neither or "
                                           "both of text and texts, a blank text, too many texts, an unknown "
                                           "field, a setting of the wrong type or out of bounds"},
    500: {"model": Problem, "description": "generation failed (the service goes on answering)"},
    503: {"model": Problem, "headers": RETRY_AFTER,
          "description": "overloaded: more than --max-queue texts wait for generation; retry after Retry-After "
                        "seconds"},
}
