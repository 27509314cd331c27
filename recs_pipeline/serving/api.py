"""The HTTP API's request and response bodies (pydantic), and the checks the framework does not make.

Every route declares these as its ``response_model`` and, per status, in ``responses=``, so the
OpenAPI document (``/openapi.json``) lists each status code a route answers with and its body.
Every 422 the service gives, from FastAPI's own validation or from the service's checks, has the
body :class:`ErrorBody` (``detail`` plus ``problems``, each naming where the problem is).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import unquote_plus, unquote_to_bytes

from pydantic import BaseModel, ConfigDict, Field, JsonValue

MAX_K = 100
MAX_BATCH = 1000
# Item ids one recommendations request may exclude (``?exclude=``, repeated).
MAX_EXCLUDE = 200
# A request body larger than this is refused (413) before it is read whole: 1000 events of four
# 256-character ids and a timestamp fit in about 1.2 MB.
MAX_BODY_BYTES = 4 * 1024 * 1024
# X-Request-ID: accepted when it is 1 to 128 visible ASCII characters, else replaced by a generated one.
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")


def valid_request_id(value: str | None) -> bool:
    """A client's request id is taken when it is 1 to 128 visible ASCII characters (no spaces, no controls)."""
    return value is not None and _REQUEST_ID.fullmatch(value) is not None


# ---------------------------------------------------------------- errors


class Problem(BaseModel):
    """One problem with the request: where it is (``query.k``, ``path.user_id``, ``body.events.3.user_id``) and what."""

    where: str = Field(examples=["query.k"])
    problem: str = Field(examples=["Input should be less than or equal to 100"])


class ErrorBody(BaseModel):
    """The body of every 422 (and of other client errors): a summary and the problems found."""

    detail: str = Field(examples=["invalid request"])
    problems: list[Problem] = Field(default_factory=list)


class Unavailable(BaseModel):
    """503: the service cannot answer yet (no champion model loaded)."""

    detail: str = Field(examples=["no model is loaded yet: no champion model in data/models: run `recs run` first"])


def safe_text(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``), so it can always be encoded as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------- health


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Whether this worker process can serve recommendations (200) or not (503), and with which model."""

    ready: bool
    model_version: str | None = Field(None, description="The champion version this worker serves.")
    reason: str | None = Field(None, description="Why the worker is not ready (503 only).")
    last_reload_error: str | None = Field(
        None, description="Why the newest champion is not served (the previous one still is), if it failed."
    )
    experiments_error: str | None = Field(
        None, description="Why the experiments file was refused (the previous definition stays in force), if it was."
    )
    rules_error: str | None = Field(
        None, description="Why the rules file was refused (the previous rules stay in force), if it was."
    )
    fallback: dict[str, str] | None = Field(
        None,
        description="Set when the champion failed verification and a previous verified version serves "
        "instead: `champion`, `serving` (versions) and `reason`.",
    )
    worker_pid: int = Field(description="The process id of the worker that answered (one per `--workers`).")


# ---------------------------------------------------------------- recommendations


class Contribution(BaseModel):
    """One ranker feature's contribution to an item's score (LightGBM ``pred_contrib``)."""

    feature: str
    contribution: float


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="The ranker's score; items are in descending order.")
    source: str = Field(
        description="The candidate source credited with the item (covis, recent, als, usercf, catpop, content, trending, popular: the first of these that proposed it; `pinned` when only a pin rule put it there; `explore` in an exploration slot)."
    )
    sources: list[str] = Field(description="Every candidate source that proposed the item.")
    reason: str = Field(examples=["viewed together with i42"], description="A short human reason for the item.")
    category_id: str | None = None
    rules: list[str] | None = Field(
        None, description="The merchandising rules that pinned or boosted this item (the rules file), if any."
    )
    contributions: list[Contribution] | None = Field(
        None, description="With `explain=true`: the (up to) three largest feature contributions."
    )


class DroppedItem(BaseModel):
    item_id: str
    reason: str = Field(
        examples=["blocked:recall"],
        description="unavailable (the live catalog), outside_category, blocked:<rule> (a block rule).",
    )


class Recommendations(BaseModel):
    request_id: str = Field(
        description="Identifies this served list: its exposure is logged under it, and events sent with it "
        "are attributed to it. Unique per answer (not the X-Request-ID tracing header)."
    )
    user_id: str
    model_version: str
    experiment: str | None = Field(None, description="The A/B experiment running now, if one is (docs/EXPERIMENTS.md).")
    variant: str | None = Field(None, description="The user's variant of that experiment (sticky per user).")
    k: int
    category: str | None
    diversity: float = Field(0.0, description="The strength of the category re-rank applied (0 = the ranker's order).")
    explore: int = Field(0, description="Exploration slots asked for (items placed there have source `explore`).")
    items: list[RecommendedItem]
    fallback: bool = Field(description="True when the answer is not fully personal (see fallback_reasons).")
    fallback_reasons: list[str] = Field(
        examples=[["no_personal_signal"]],
        description="no_personal_signal, online_store_unavailable, model_only, filled_with_popular, "
        "variant_model_unavailable (the variant's pinned model could not be loaded: the champion answered).",
    )
    online_error: str | None = Field(None, description="Why the online read failed or timed out, if it did.")
    candidates: int = Field(description="Candidates ranked before the top-k was taken.")
    dropped: list[DroppedItem] | None = Field(
        None, description="With `explain=true`: the candidates the filters removed before ranking, with the reason."
    )
    timings_ms: dict[str, float] = Field(description="Milliseconds per stage: online, retrieve, filter, rank, total.")


# ---------------------------------------------------------------- events


class EventIn(BaseModel):
    """One event in the ingestion contract (docs/CONTRACT.md).

    Each event is checked by ingestion's own rules: an event that breaks them (a missing field, an
    unknown event_type, an unparseable or far-future ts, an id over 256 characters) is rejected by its
    index with ingestion's reason, and the batch's other events are still taken. Other fields are
    ignored.
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"user_id": "u1", "item_id": "i42", "event_type": "view", "ts": "2026-11-22T10:00:00Z"}]
        },
    )

    user_id: JsonValue = Field(None, description="Required; a string (numbers are taken as text).")
    item_id: JsonValue = Field(None, description="Required; a string (numbers are taken as text).")
    event_type: JsonValue = Field(
        None,
        description="Required; view, add_to_cart, purchase or favorite, or hide (negative "
        "feedback: the item is not recommended to this user again until a later event with it).",
    )
    ts: JsonValue = Field(None, description="Required; an ISO-8601 timestamp (UTC when it has no offset).")
    event_id: JsonValue = Field(None, description="Optional; derived from the event when absent.")
    session_id: JsonValue = Field(None, description="Optional; derived at ingestion when absent.")
    request_id: JsonValue = Field(
        None,
        description="Optional; the `request_id` of the served list this event responds to (a click on a "
        "recommended item): the event is attributed to that exposure.",
    )


class EventsIn(BaseModel):
    """A batch of 1 to 1000 events."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the event in the batch (from 0).")
    reason: str = Field(examples=["unknown event_type: teleport"], description="Ingestion's reason.")
    where: str = Field(
        examples=["body.events.3.event_type"], description="The field the reason is about (else the event)."
    )


# The contract's fields, in the order ingestion checks them (sql/validate_events.sql).
EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts", "session_id", "request_id")
ID_FIELDS = ("event_id", "user_id", "item_id", "session_id", "request_id")


def rejected_event(index: int, reason: str, event: dict[str, Any], max_id_length: int) -> RejectedEvent:
    """An event ingestion refused, with ``where`` naming the field of ingestion's ``reason``."""
    field: str | None = None
    if reason.startswith("id longer than"):
        field = next((f for f in ID_FIELDS if len(str(event.get(f) or "")) > max_id_length), None)
    else:
        found = [(m.start(), f) for f in EVENT_FIELDS if (m := re.search(rf"\b{f}\b", reason))]
        field = min(found)[1] if found else None
    where = f"body.events.{index}" + (f".{field}" if field else "")
    return RejectedEvent(index=index, reason=reason, where=where)


class EventsAccepted(BaseModel):
    """202: the valid events are stored (fsynced to the worker's journal, landed with it within
    `RECS_SERVE_COLLECTOR_FLUSH_SECONDS`) and in their users' live sessions; the others are listed with reasons."""

    accepted: int = Field(ge=1)
    rejected: list[RejectedEvent]
    landed_file: str | None = Field(
        description="The file the accepted events land in (landing/events/): the worker's journal, stored already, "
        "landed under this name within RECS_SERVE_COLLECTOR_FLUSH_SECONDS (with other posts' events)."
    )
    sessions_pushed: int = Field(description="Users whose live session was updated in the online store.")
    event_ids: list[str] = Field(description="The accepted events' ids (given or derived), in batch order.")


# ---------------------------------------------------------------- items


class ItemIn(BaseModel):
    """One item update in the catalog contract (docs/CONTRACT.md), checked by ingestion's rules."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "item_id": "i42",
                    "category_id": "c7",
                    "price": 19.9,
                    "available": False,
                    "updated_at": "2026-12-01T10:00:00Z",
                }
            ]
        },
    )

    item_id: JsonValue = Field(None, description="Required; a string (numbers are taken as text).")
    category_id: JsonValue = Field(None, description="Required; a string (numbers are taken as text).")
    price: JsonValue = Field(None, description="Optional; a number >= 0.")
    available: JsonValue = Field(None, description="Required; true or false.")
    updated_at: JsonValue = Field(
        None, description="Required; an ISO-8601 timestamp: the newest update of an item wins."
    )


class ItemsIn(BaseModel):
    """A batch of 1 to 1000 item updates."""

    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class RejectedItem(BaseModel):
    index: int = Field(description="Position of the item in the batch (from 0).")
    reason: str = Field(examples=["missing available"], description="Ingestion's reason.")


class NotLiveItem(BaseModel):
    index: int = Field(description="Position of the item in the batch (from 0).")
    item_id: str
    reason: str = Field(description="Why the served model does not apply this update now.")


class ItemsAccepted(BaseModel):
    """202: the valid updates are landed (ingestion loads them) and applied by the serving catalog."""

    accepted: int = Field(ge=1)
    rejected: list[RejectedItem]
    landed_file: str = Field(description="The file the accepted updates landed as (landing/items/).")
    live: int = Field(
        description="Accepted updates in force for the served model: from this answer on, every worker filters "
        "with them (an item marked unavailable is not served)."
    )
    not_live: list[NotLiveItem] = Field(
        description="Accepted updates the served model cannot apply now (they reach it with the next model)."
    )


def text_problems(value: Any, where: str) -> Iterator[Problem]:
    """Problems with ``value`` (a decoded JSON value) that no JSON interchange may carry.

    Strings (keys too) with lone surrogates, e.g. JSON ``"\\ud800"``: they are not Unicode text and
    cannot be written as UTF-8. Numbers that are not finite (``NaN``, ``Infinity``, or ``1e999``,
    which Python's JSON parser reads as infinity): JSON has no such numbers.
    """
    if isinstance(value, str):
        if not _encodable(value):
            yield Problem(where=where, problem="not valid Unicode text (a lone UTF-16 surrogate)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield Problem(where=where, problem="not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = key if _encodable(key) else safe_text(key)
            if name is not key:
                yield Problem(where=f"{where}.{name}", problem="field name is not valid Unicode text")
            yield from text_problems(item, f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from text_problems(item, f"{where}.{i}")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raw_text_problems(raw_path: bytes | None, query_string: bytes, path_param: str | None) -> list[Problem]:
    """Problems with the URL's percent-encoded bytes that are not UTF-8.

    The framework decodes them with replacement characters (``%ED%A0%80`` becomes ``\\ufffd``), so a
    user id or category that was not text would otherwise be served as another, different string.
    ``path_param`` names the route's one path parameter.
    """
    problems = []
    if raw_path is not None and path_param is not None and not _utf8(unquote_to_bytes(raw_path)):
        problems.append(Problem(where=f"path.{path_param}", problem="not valid UTF-8 once percent-decoded"))
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        if not _utf8(unquote_to_bytes(value.replace(b"+", b" "))) or not _utf8(unquote_to_bytes(name)):
            label = unquote_plus(name.decode("latin-1"), errors="replace")
            problems.append(Problem(where=f"query.{label}", problem="not valid UTF-8 once percent-decoded"))
    return problems


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------- item endpoints (similar, bought together, cart)

# Items a cart may hold (POST /recommendations/cart).
MAX_CART_ITEMS = 100


class RelatedItem(BaseModel):
    """One item of an item or cart answer."""

    item_id: str
    score: float = Field(
        description="Similar items and the cart: the reciprocal-rank fusion score, sum over the lists that "
        "proposed the item of 1 / (60 + its rank there), descending. Bought together: the source's own score "
        "(co-purchase weight, then co-view weight for items topped up from co-visitation), descending within each."
    )
    sources: list[str] = Field(
        examples=[["covis", "content"]],
        description="Every list that proposed the item: bought_together, covis (viewed in the same sessions), "
        "als (similar ALS factors), content (same category, nearest price band), popular (the fallback).",
    )
    reason: str = Field(examples=["viewed together with i42"], description="A short human reason for the item.")
    category_id: str | None = None


class RelatedItems(BaseModel):
    """The items related to one item (``GET /items/{item_id}/similar`` and ``/bought-together``)."""

    item_id: str
    model_version: str
    k: int
    items: list[RelatedItem] = Field(description="At most k items; never the item itself nor an unavailable item.")
    fallback: bool = Field(description="True when the answer is not what the endpoint names (see fallback_reasons).")
    fallback_reasons: list[str] = Field(
        examples=[["no_bought_together_matrix"]],
        description="no_bought_together_matrix (the served model predates the bought-together table: the items "
        "are co-visitation neighbours), filled_with_covis (fewer than k items were bought together with it: "
        "co-visitation neighbours follow them).",
    )
    timings_ms: dict[str, float] = Field(description="Milliseconds: total.")


class CartIn(BaseModel):
    """A cart: the item ids in it (0 to 100; unknown ids are reported, not refused), how many items to
    answer, and optionally the shopper (whose consumed items are then left out, as in their recommendations)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"item_ids": ["i42", "i7"], "k": 20, "user_id": "u1"}]}
    )

    item_ids: list[str] = Field(max_length=MAX_CART_ITEMS)
    k: int = Field(20, ge=1, le=MAX_K)
    user_id: str | None = Field(
        None, min_length=1, description="Optional; at most 256 characters (an event's user id)."
    )


class CartRecommendations(BaseModel):
    """Recommendations for a cart: its items' bought-together and similar items, fused."""

    model_version: str
    user_id: str | None
    k: int
    items: list[RelatedItem] = Field(
        description="At most k items; never an item of the cart, an unavailable one, or (with user_id) one the "
        "shopper consumed."
    )
    unknown_item_ids: list[str] = Field(
        description="Cart items the served model has never seen (they propose nothing), in cart order."
    )
    fallback: bool = Field(description="True when the answer is not fully from the cart (see fallback_reasons).")
    fallback_reasons: list[str] = Field(
        examples=[["no_known_cart_items"]],
        description="no_known_cart_items (the cart is empty or none of its items is known: popular items), "
        "filled_with_popular (fewer than k related items: popular ones follow), no_bought_together_matrix (the "
        "served model predates the bought-together table), online_store_unavailable (user_id given but the "
        "shopper's history could not be read: nothing consumed is left out).",
    )
    online_error: str | None = Field(None, description="Why the shopper's online read failed, if it did.")
    timings_ms: dict[str, float] = Field(description="Milliseconds: online (the shopper's read), total.")
