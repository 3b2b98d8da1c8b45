"""NGSI-LD (read-only) under /ngsi-ld/v1: our devices, latest observations and incidents
as FIWARE Smart Data Model entities, queried by type, id, q, attrs and geo-queries,
paged by limit/offset; the JSON-LD @context is ours, served here (no key: it holds no data)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from api import audit
from api.deps import CityDep, InfluxDep, KeyDep, SettingsDep, TenancyDep, influx_of
from api.ngsild_data import alert_of, device_entity_of, entities_of
from api.ngsild_errors import bad_request, documented, not_found
from api.ngsild_query import (
    GEOREL_PATTERN,
    OPTIONS_PATTERN,
    Q_PATTERN,
    Term,
    geo_filter,
    parse_q,
    simplified,
    split_list,
)
from api.routes.common import CITY_QUERY
from safecity.ngsild_entities import Entity, key_values, parse_urn, project
from safecity.ngsild_models import ALERT, MODELS, packaged_context

PREFIX = "/ngsi-ld/v1"
CONTEXT_PATH = f"{PREFIX}/jsonldContexts/safecity"
JSON_LD = "application/ld+json"
DEFAULT_LIMIT = 20
ENTITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type"],
    "properties": {"id": {"type": "string"}, "type": {"type": "string"}},
    "additionalProperties": True,
}

router = APIRouter(prefix=PREFIX, tags=["ngsi-ld"])
context_router = APIRouter(tags=["ngsi-ld"])

TypeQuery = Annotated[
    str | None,
    Query(
        max_length=1000,
        description="Entity types, comma-separated: " + ", ".join(MODELS),
    ),
]
AttrsQuery = Annotated[
    str | None, Query(max_length=1000, description="Only these attributes, comma-separated")
]
OptionsQuery = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=OPTIONS_PATTERN,
        description="`keyValues` for the simplified form (or `normalized`); `count`",
    ),
]
FormatQuery = Annotated[
    Literal["normalized", "simplified", "keyValues", "temporalValues"] | None,
    Query(description="`simplified`/`keyValues` or `normalized` (the default)"),
]
CityQuery = Annotated[str | None, Query(alias="city", max_length=64, description=CITY_QUERY)]


def context_url(request: Request) -> str:
    """The absolute URL of our @context."""
    return str(request.base_url).rstrip("/") + CONTEXT_PATH


def respond(request: Request, body: Entity | list[Entity], headers: dict[str, str]) -> Response:
    """JSON with the @context in a Link header, or JSON-LD with it inline if asked for."""
    url = context_url(request)
    if JSON_LD in request.headers.get("accept", ""):
        items = body if isinstance(body, list) else [body]
        for item in items:
            item["@context"] = url
        return JSONResponse(body, headers=headers, media_type=JSON_LD)
    link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="{JSON_LD}"'
    links = ", ".join(x for x in (link, headers.pop("Link", "")) if x)
    return JSONResponse(body, headers={**headers, "Link": links})


def ok(description: str, array: bool) -> dict[int | str, dict[str, Any]]:
    """The documented 200: an entity (or array of them) as JSON or JSON-LD."""
    schema = {"type": "array", "items": ENTITY_SCHEMA} if array else ENTITY_SCHEMA
    content = {"application/json": {"schema": schema}, JSON_LD: {"schema": schema}}
    return {200: {"description": description, "content": content}}


def _types(raw: str | None) -> tuple[str, ...]:
    names = split_list(raw) or ()
    by_iri = {m.type_iri: m.name for m in MODELS.values()}
    return tuple(by_iri.get(n, n) for n in names)


def _next_link(request: Request, offset: int, limit: int) -> str:
    url = request.url.include_query_params(offset=offset + limit, limit=limit)
    return f'<{url.path}?{url.query}>; rel="next"'


@router.get(
    "/entities",
    response_model=None,
    responses={**ok("The matching entities, in id order", array=True), **documented(404, 502, 503)},
)
async def query_entities(
    request: Request,
    settings: SettingsDep,
    city: CityDep,
    influx: InfluxDep,
    type: TypeQuery = None,
    id: Annotated[
        str | None, Query(max_length=2000, description="Entity ids, comma-separated")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=1000,
            pattern=Q_PATTERN,
            description="Filters `attr<op>value` joined by `;` (and); values are numbers, "
            'true/false or "strings"',
        ),
    ] = None,
    attrs: AttrsQuery = None,
    georel: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=GEOREL_PATTERN,
            description="`near;maxDistance==<m>`, `near;minDistance==<m>`, `within`",
        ),
    ] = None,
    geometry: Annotated[
        Literal["Point", "Polygon"] | None, Query(description="`Point` (near), `Polygon` (within)")
    ] = None,
    coordinates: Annotated[
        str | None, Query(max_length=8000, description="GeoJSON coordinates, as JSON")
    ] = None,
    geoproperty: Annotated[
        Literal["location"] | None, Query(description="The GeoProperty: `location`")
    ] = None,
    limit: Annotated[int | None, Query(ge=0, description="Page size (default 20)")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Entities to skip")] = 0,
    count: Annotated[bool, Query(description="Total in the NGSILD-Results-Count header")] = False,
    options: OptionsQuery = None,
    format: FormatQuery = None,
    city_id: CityQuery = None,
) -> Response:
    """Entities of the city by type and/or id, filtered by q and a geo-query, paged
    (no type, id, q nor geo-query: every entity of the city)."""
    size = min(DEFAULT_LIMIT, settings.max_page_size) if limit is None else limit
    if size > settings.max_page_size:
        raise bad_request(f"limit: must be at most {settings.max_page_size}")
    kv = simplified(options, format)
    count = count or "count" in (split_list(options) or ())
    ids = split_list(id)
    keep = _selection(
        ids,
        parse_q(q) if q is not None else (),
        geo_filter(georel, geometry, coordinates, geoproperty),
    )
    types = _types(type) if type is not None else tuple(MODELS)
    if ids is not None:
        named = {parsed[0] for parsed in map(parse_urn, ids) if parsed is not None}
        types = tuple(t for t in types if t in named)
    found = await entities_of(influx, city, types)
    found = [e for e in sorted(found, key=lambda e: str(e["id"])) if keep(e)]
    page = found[offset : offset + size]
    headers: dict[str, str] = {}
    if count:
        headers["NGSILD-Results-Count"] = str(len(found))
    if size and offset + size < len(found):
        headers["Link"] = _next_link(request, offset, size)
    body = [project(e, split_list(attrs)) for e in page]
    return respond(request, [key_values(e) for e in body] if kv else body, headers)


def _selection(
    ids: tuple[str, ...] | None, terms: tuple[Term, ...], near: Callable[[Entity], bool] | None
) -> Callable[[Entity], bool]:
    """Whether an entity is one of the ids (if given), satisfies q and the geo-query."""

    def keep(entity: Entity) -> bool:
        return (
            (ids is None or entity["id"] in ids)
            and all(t.matches(entity) for t in terms)
            and (near is None or near(entity))
        )

    return keep


@router.get(
    "/entities/{entity_id}",
    response_model=None,
    responses={**ok("The entity", array=False), **documented(404, 502, 503)},
)
async def retrieve_entity(
    request: Request,
    key: KeyDep,
    tenancy: TenancyDep,
    entity_id: str,
    attrs: AttrsQuery = None,
    options: OptionsQuery = None,
    format: FormatQuery = None,
) -> Response:
    """One entity: a device's latest observation, the Device itself, or an incident's Alert."""
    kv = simplified(options, format)
    parsed = parse_urn(entity_id)
    entity: Entity | None = None
    if parsed is not None and parsed[0] == ALERT.name:
        for city in tenancy.visible(key):
            entity = await alert_of(influx_of(request, city), city, parsed[1])
            if entity is not None:
                audit.note_city(request.scope, city.id)
                break
    elif parsed is not None and parsed[0] in MODELS:
        owner = tenancy.city_of_device(key, parsed[1])
        device = owner.device(parsed[1]) if owner is not None else None
        if owner is not None and device is not None:
            audit.note_city(request.scope, owner.id)
            entity = await device_entity_of(influx_of(request, owner), owner, device, parsed[0])
    if entity is None:
        # The same answer for an entity that does not exist and one of a city the key
        # may not see, as /v1 gives.
        raise not_found(f"unknown entity {entity_id}")
    entity = project(entity, split_list(attrs))
    return respond(request, key_values(entity) if kv else entity, {})


@context_router.get(
    CONTEXT_PATH,
    response_model=None,
    responses={200: {"description": "The JSON-LD @context", "content": {JSON_LD: {}}}},
)
async def get_context() -> Response:
    """Our JSON-LD @context: the Smart Data Models' terms of every type we serve."""
    return Response(packaged_context(), media_type=JSON_LD)
