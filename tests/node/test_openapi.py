"""The OpenAPI document describes exactly the routes the server has."""

from __future__ import annotations

import json

import aiohttp

from mrx.node import openapi
from mrx.node.api import NodeApi
from mrx.node.problems import CATALOGUE
from tests.nodeproc import NodeProcess


def _server_routes() -> set[tuple[str, str]]:
    api = NodeApi(config=None, store=None, ingest=None, access=None, keystore=None, metrics=None,  # type: ignore[arg-type]
        partners=None, receiver=None, deliveries=None, router=None, recognition=None, unsealing=None, national=None, audit=None, witness=None,  # type: ignore[arg-type]
    )
    return {(route.method.lower(), route.path) for route in api.routes()}


def _documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, item in openapi.document()["paths"].items() for method in item}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    assert _server_routes() == _documented_routes()


def test_document_is_openapi_31_with_resolvable_refs() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, f"dangling $ref {ref}"
    assert set(schemas["Problem"]["properties"]["code"]["enum"]) == set(CATALOGUE)


async def test_node_serves_the_document(node: NodeProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + "/openapi.json") as resp:
            assert resp.status == 200
            assert await resp.json() == json.loads(json.dumps(openapi.document()))
