"""SchemaRegistry: whose fault is a 404, and how often the registry is asked.

A loopback ``http.server`` stands in for a Confluent Schema Registry (no mock of urllib):
``GET /schemas/ids/<id>`` answers the schemas it holds, ``GET /subjects`` its subjects (or
404 where it is not a registry at all). The clock is injected, so TTLs expire at once.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from astro_classifier.core.errors import InputError, TransientError
from astro_classifier.stream.codecs import SchemaRegistry

SCHEMA = {"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}


class StandIn:
    """Serves ``schemas`` (id -> schema) and ``subjects`` (``None``: /subjects is a 404,
    anything else is answered as JSON); ``failing`` maps a path to an error status;
    ``requests`` lists the paths asked for."""

    def __init__(self) -> None:
        owner = self
        self.schemas: dict[int, dict] = {}
        self.subjects: object = None
        self.requests: list[str] = []
        self.failing: dict[str, int] = {}  # path -> HTTP status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                owner.requests.append(self.path)
                status, body = 404, {"error_code": 40403, "message": "not found"}
                if self.path in owner.failing:
                    status, body = owner.failing[self.path], {"error_code": 50301}
                elif self.path == "/subjects" and owner.subjects is not None:
                    status, body = 200, owner.subjects
                elif self.path.startswith("/schemas/ids/"):
                    schema = owner.schemas.get(int(self.path.rsplit("/", 1)[1]))
                    if schema is not None:
                        status, body = 200, {"schema": json.dumps(schema)}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    try:
        yield server
    finally:
        server.close()


def registry(stand_in: StandIn, clock: Clock) -> SchemaRegistry:
    return SchemaRegistry(
        stand_in.url, timeout_s=2, unknown_ttl_s=60.0, health_ttl_s=10.0, clock=clock
    )


def test_an_unknown_id_on_a_registry_with_subjects_is_bad_input_and_cached(
    stand_in: StandIn,
) -> None:
    stand_in.schemas = {704: SCHEMA}
    stand_in.subjects = ["lsst-alerts-value"]
    clock = Clock()
    schemas = registry(stand_in, clock)
    with pytest.raises(InputError, match="schema id 999 is unknown"):
        schemas.get(999, "alerts[0]@1")
    assert stand_in.requests == ["/schemas/ids/999", "/subjects"]
    for offset in range(2, 22):  # a flood of the same unknown id: no new request
        with pytest.raises(InputError, match="schema id 999"):
            schemas.get(999, f"alerts[0]@{offset}")
    assert stand_in.requests == ["/schemas/ids/999", "/subjects"]


def test_an_unknown_id_on_a_registry_that_serves_its_canary_is_bad_input(
    stand_in: StandIn,
) -> None:
    stand_in.schemas = {704: SCHEMA}
    clock = Clock()
    schemas = registry(stand_in, clock)
    assert schemas.get(704, "alerts[0]@0")["name"] == "r"
    with pytest.raises(InputError, match="schema id 999 is unknown"):
        schemas.get(999, "alerts[0]@1")
    # The health check re-fetched the id served before (no /subjects needed).
    assert stand_in.requests == ["/schemas/ids/704", "/schemas/ids/999", "/schemas/ids/704"]
    with pytest.raises(InputError):
        schemas.get(999, "alerts[0]@2")
    assert schemas.get(704, "alerts[0]@3")["name"] == "r"  # still cached
    assert len(stand_in.requests) == 3


def test_a_wiped_registry_is_transient_and_its_404s_are_not_cached(stand_in: StandIn) -> None:
    stand_in.schemas = {704: SCHEMA}
    stand_in.subjects = ["lsst-alerts-value"]
    clock = Clock()
    schemas = registry(stand_in, clock)
    assert schemas.get(704, "alerts[0]@0")["name"] == "r"
    stand_in.schemas, stand_in.subjects = {}, []  # wiped (or the URL now points elsewhere)
    for _ in range(3):
        with pytest.raises(TransientError, match="no longer knows schema id 704") as caught:
            schemas.get(703, "alerts[0]@1")
        assert caught.value.dependency == "Schema Registry"
        assert "wiped" in str(caught.value) and stand_in.url in str(caught.value)
    # One canary within health_ttl_s; the unknown id is asked each time (not cached).
    assert stand_in.requests.count("/schemas/ids/704") == 2
    assert stand_in.requests.count("/schemas/ids/703") == 3
    assert schemas.get(704, "alerts[0]@2")["name"] == "r"  # served before: still cached
    # The canary's verdict expires: asked again, still wiped.
    clock.now += 11
    with pytest.raises(TransientError, match="no longer knows schema id 704"):
        schemas.get(703, "alerts[0]@3")
    assert stand_in.requests.count("/schemas/ids/704") == 3
    # Restored, with 703 registered meanwhile: found at once (the 404s were not cached).
    stand_in.schemas = {704: SCHEMA, 703: SCHEMA}
    assert schemas.get(703, "alerts[0]@4")["name"] == "r"
    # Restored without 702: a genuine unknown id once the unhealthy verdict expires.
    with pytest.raises(TransientError):
        schemas.get(702, "alerts[0]@5")
    clock.now += 11
    with pytest.raises(InputError, match="schema id 702 is unknown"):
        schemas.get(702, "alerts[0]@6")


def test_a_canary_that_fails_is_transient(stand_in: StandIn) -> None:
    stand_in.schemas = {704: SCHEMA}
    schemas = registry(stand_in, Clock())
    schemas.get(704, "alerts[0]@0")
    stand_in.failing["/schemas/ids/704"] = 503  # 999 is a 404, the canary a 503
    with pytest.raises(TransientError, match="HTTP 503"):
        schemas.get(999, "alerts[0]@1")


def test_a_url_that_is_not_a_registry_is_transient(stand_in: StandIn) -> None:
    clock = Clock()
    schemas = registry(stand_in, clock)  # 404 for everything, /subjects included
    for offset in range(20):
        with pytest.raises(TransientError, match="does not look like a Schema Registry"):
            schemas.get(704, f"alerts[0]@{offset}")
    assert stand_in.requests.count("/subjects") == 1  # the verdict is cached
    for subjects in ([], {"subjects": ["a"]}, "lsst"):  # empty, not a list
        stand_in.subjects = subjects
        clock.now += 11
        with pytest.raises(TransientError, match="does not look like a Schema Registry"):
            schemas.get(704, "alerts[0]@99")
    stand_in.subjects = ["lsst-alerts-value"]  # a registry after all, without 704
    clock.now += 11
    with pytest.raises(InputError, match="schema id 704 is unknown"):
        schemas.get(704, "alerts[0]@100")


def test_a_cached_404_expires_and_the_id_is_fetched_again(stand_in: StandIn) -> None:
    stand_in.subjects = ["lsst-alerts-value"]
    clock = Clock()
    schemas = registry(stand_in, clock)
    with pytest.raises(InputError):
        schemas.get(705, "alerts[0]@1")
    stand_in.schemas = {705: SCHEMA}  # registered later
    clock.now += 59
    with pytest.raises(InputError):
        schemas.get(705, "alerts[0]@2")
    assert stand_in.requests.count("/schemas/ids/705") == 1
    clock.now += 2  # past unknown_ttl_s
    assert schemas.get(705, "alerts[0]@3")["name"] == "r"
    assert stand_in.requests.count("/schemas/ids/705") == 2


def test_the_registry_survives_pickling_with_its_caches(stand_in: StandIn) -> None:
    stand_in.schemas = {704: SCHEMA}
    stand_in.subjects = ["lsst-alerts-value"]
    schemas = SchemaRegistry(stand_in.url, timeout_s=2)  # the real clock: picklable
    schemas.get(704, "alerts[0]@0")
    with pytest.raises(InputError):
        schemas.get(999, "alerts[0]@1")
    copy = pickle.loads(pickle.dumps(schemas))
    n = len(stand_in.requests)
    assert copy.get(704, "alerts[0]@2")["name"] == "r"
    with pytest.raises(InputError):
        copy.get(999, "alerts[0]@3")
    assert len(stand_in.requests) == n
