"""The item endpoints of the scoring service: similar items, bought together, a cart's recommendations.

``GET /items/{item_id}/similar``, ``GET /items/{item_id}/bought-together`` and
``POST /recommendations/cart`` rank with :mod:`recs_pipeline.models.item_similarity` on the served
model (the holder's current recommender, 503 before one is loaded). Like ``/recommendations``,
each request first applies the item updates landed since the last one (the live catalog) and
filters with the recommender's :meth:`~recs_pipeline.serving.recommender.Recommender.keep_mask`
(availability with those updates, the block rules in force). The HTTP metrics
(``recs_http_requests_total``, ``recs_http_request_seconds``) count them by route template through
the service's middleware; their fallbacks are counted in ``recs_fallbacks_total`` by reason.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from recs_pipeline.models.item_similarity import Related, neighbours_of, reason
from recs_pipeline.serving.api import (
    MAX_K,
    CartIn,
    CartRecommendations,
    ErrorBody,
    Problem,
    RelatedItem,
    RelatedItems,
    Unavailable,
    raw_text_problems,
    text_problems,
)
from recs_pipeline.serving.recommender import Recommender, ServeOptions, signals_of
from recs_pipeline.warehouse.ingest import MAX_ID_LENGTH

if TYPE_CHECKING:
    from recs_pipeline.serving.app import ModelHolder

ITEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "The served model has never seen the item (`problems`: path.item_id)"},
    422: {"model": ErrorBody, "description": "A parameter is invalid; `problems` names it (`query.k`, `path.item_id`)"},
    503: {"model": Unavailable, "description": "No model is loaded yet (run `recs run`)"},
}
CART_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorBody,
        "description": "The body is not a cart (`item_ids` a list of at most 100 strings, `k` 1 to 100, `user_id` "
        "1 to 256 characters, no other field) or a text in it is not valid Unicode; `problems` names each field",
    },
    503: {"model": Unavailable, "description": "No model is loaded yet (run `recs run`)"},
}

# the routes' parameters (module level: FastAPI resolves the annotations by name)
ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, description="The item's id")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="How many items")]


def item_routes(holder: ModelHolder, state: dict[str, Any]) -> APIRouter:
    """The three routes, answering with ``holder``'s model; ``state`` holds the app's parts
    (``rules``: the rules file, ``reader``: the online store reader), filled at start-up."""
    from recs_pipeline.serving.app import ApiError  # app.py includes this router: imported when called

    router = APIRouter()

    def text_of_url(request: Request) -> None:
        problems = raw_text_problems(request.scope.get("raw_path"), request.scope.get("query_string", b""), "item_id")
        if problems:
            raise ApiError(422, "invalid request", problems)

    def served() -> Recommender:
        recommender = holder.serving()
        if recommender is None:
            raise ApiError(503, f"no model is loaded yet: {holder.error}")
        return recommender

    def allowed(recommender: Recommender) -> np.ndarray:
        """Items that may be answered: available (live catalog applied) and not blocked by a rule in force."""
        options = ServeOptions(rules=state["rules"].active(datetime.now(UTC)))
        return recommender.keep_mask(np.arange(len(recommender.model.index)), options)

    def position(recommender: Recommender, item_id: str) -> int:
        found = int(recommender.model.index.positions([item_id])[0])
        if found < 0:
            detail = (
                f"unknown item {item_id!r}: the served model {recommender.model.version} has never seen it "
                "(a new item reaches the model with the next training)"
            )
            raise ApiError(404, detail, [Problem(where="path.item_id", problem="unknown item")])
        return found

    def count(fallbacks: list[str]) -> None:
        for fallback in fallbacks:  # recs_fallbacks_total, beside the user lists' reasons
            holder.metrics.fallbacks.labels(fallback).inc()

    def related_items(
        item_id: str, k: int, recommender: Recommender, found: list[Related], fallbacks: list[str], started: float
    ) -> Response:
        """The answer of an item route: ``found``, best first, with the flags and the time taken."""
        body = RelatedItems(
            item_id=item_id,
            model_version=recommender.model.version,
            k=k,
            items=answer(recommender, found),
            fallback=bool(fallbacks),
            fallback_reasons=fallbacks,
            timings_ms={"total": round((time.perf_counter() - started) * 1000, 3)},
        )
        return Response(body.model_dump_json(), media_type="application/json")

    def answer(recommender: Recommender, related: list[Related]) -> list[RelatedItem]:
        model = recommender.model
        return [
            RelatedItem(
                item_id=str(model.index.ids[r.item]),
                score=round(r.score, 6),
                sources=list(r.sources),
                reason=reason(r, model.index.ids),
                category_id=model.category_of(r.item),
            )
            for r in related
        ]

    @router.get(
        "/items/{item_id}/similar",
        summary="Items similar to an item: co-viewed, similar ALS factors, same category and price band",
        response_model=RelatedItems,
        responses=ITEM_RESPONSES,
        dependencies=[Depends(text_of_url)],
    )
    def similar(item_id: ItemId, k: K = 20) -> Response:
        """The item's co-visitation neighbours (viewed in the same sessions), its nearest items by cosine of
        the ALS item factors, and the items of its category nearest its price band, merged by reciprocal-rank
        fusion: each item scores the sum of 1 / (60 + its rank) over the lists that hold it. Never the item
        itself, never an unavailable item (the live catalog's updates included) or one a block rule names."""
        started = time.perf_counter()
        recommender = served()
        item = position(recommender, item_id)
        found = neighbours_of(recommender.model).similar(item, allowed(recommender), k)
        return related_items(item_id, k, recommender, found, [], started)

    @router.get(
        "/items/{item_id}/bought-together",
        summary="Items carted or bought in the same sessions as an item",
        response_model=RelatedItems,
        responses=ITEM_RESPONSES,
        dependencies=[Depends(text_of_url)],
    )
    def bought_together(item_id: ItemId, k: K = 20) -> Response:
        """The items most often carted or bought in the same session as the item (a purchase weighs twice a
        cart), then, when fewer than k are, its co-visitation neighbours (`filled_with_covis`). A model
        trained before the bought-together table existed answers from co-visitation alone
        (`no_bought_together_matrix`). Never the item itself nor an unavailable or blocked item."""
        started = time.perf_counter()
        recommender = served()
        item = position(recommender, item_id)
        found, fallbacks = neighbours_of(recommender.model).bought_together(item, allowed(recommender), k)
        count(fallbacks)
        return related_items(item_id, k, recommender, found, fallbacks, started)

    @router.post(
        "/recommendations/cart",
        summary="Recommendations for a cart: its items' bought-together and similar items",
        response_model=CartRecommendations,
        responses=CART_RESPONSES,
    )
    def cart(body: CartIn) -> Response:
        """Every cart item's bought-together, co-visitation, ALS and same-category lists merged by
        reciprocal-rank fusion (an item proposed for several cart items, or by several lists, rises), the
        cart's items, unavailable and blocked items left out, topped up with popular items when fewer than k
        are found. Ids the model has never seen are listed in `unknown_item_ids`; a cart with no known item
        answers popular items (`no_known_cart_items`). With `user_id`, the items the shopper consumed (the
        model's consumed-items policy, as in their recommendations) are left out too."""
        started = time.perf_counter()
        problems = list(text_problems(body.model_dump(), "body"))
        if body.user_id is not None and len(body.user_id) > MAX_ID_LENGTH:
            problems.append(Problem(where="body.user_id", problem=f"longer than {MAX_ID_LENGTH} characters"))
        if problems:
            raise ApiError(422, "invalid request", problems)
        recommender = served()
        model = recommender.model
        positions = model.index.positions(body.item_ids) if body.item_ids else np.empty(0, dtype=np.int64)
        unknown = list(dict.fromkeys(i for i, p in zip(body.item_ids, positions.tolist(), strict=True) if p < 0))
        mask = allowed(recommender)
        fallbacks: list[str] = []
        online_ms, online_error = 0.0, None
        if body.user_id is not None:
            t = time.perf_counter()
            ctx = state["reader"].read(body.user_id)
            online_ms = (time.perf_counter() - t) * 1000
            if not ctx.online_ok:
                fallbacks.append("online_store_unavailable")
                online_error = ctx.error
            history, reference = recommender.history(ctx)
            consumed = signals_of(body.user_id, history).consumed(
                recommender.recipe.consumed, model.index, reference=reference
            )
            mask[consumed.indices] = False
        found, more = neighbours_of(model).cart(positions[positions >= 0].tolist(), mask, body.k)
        fallbacks += more
        count(fallbacks)
        answer_body = CartRecommendations(
            model_version=model.version,
            user_id=body.user_id,
            k=body.k,
            items=answer(recommender, found),
            unknown_item_ids=unknown,
            fallback=bool(fallbacks),
            fallback_reasons=fallbacks,
            online_error=online_error,
            timings_ms={
                "online": round(online_ms, 3),
                "total": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return Response(answer_body.model_dump_json(), media_type="application/json")

    return router
