"""Every endpoint of the service against a real ``ipsecsa serve`` process, over its Unix socket
and its TCP port: contexts whole and step by step, packets both ways, statistics, metrics,
events, tokens; 401 and 403 leave the state as it was; malformed requests get a 4xx naming the
field and the service keeps serving."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading

import httpx
import pytest

from ipsecsa import api
from ipsecsa.client import Client, Forbidden, Unauthorized
from tests.service.server import A, B, Server, esp, pair, udp_packet


def _raw(server: Server, token: str | None = None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def test_openapi_lists_every_operation(server: Server) -> None:
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in [("/v1/contexts", "post"), ("/v1/contexts", "get"),
                         ("/v1/contexts/{context_id}", "get"),
                         ("/v1/contexts/{context_id}", "delete"),
                         ("/v1/contexts/{context_id}/expire", "post"),
                         ("/v1/contexts/new", "post"), ("/v1/contexts/{context_id}/spi", "post"),
                         ("/v1/contexts/{context_id}/inbound", "post"),
                         ("/v1/contexts/{context_id}/outbound", "post"),
                         ("/v1/filters", "post"), ("/v1/filters/{filter_id}", "delete"),
                         ("/v1/statistics", "get"), ("/v1/packets", "post"),
                         ("/v1/events", "get"), ("/v1/tokens", "post"), ("/v1/tokens", "get"),
                         ("/v1/tokens/{token_id}", "delete"), ("/metrics", "get")]:
        assert method in paths[path], (path, method)
    schema = doc["components"]["schemas"]["CreateContext"]
    assert schema["additionalProperties"] is False and set(schema["required"]) == {
        "outbound", "inbound"}


def test_two_pairs_packets_both_ways_socket_and_tcp(server: Server) -> None:
    """Host A's and host B's contexts in one service; a packet A->B and one B->A through the
    packet endpoint, the counters of both contexts after."""
    out_a, in_a = pair(1)
    with server.client() as unix, server.client(tcp=True) as tcp:
        ctx_a = unix.create_context(outbound=out_a, inbound=in_a)
        ctx_b = tcp.create_context(outbound=in_a, inbound=out_a)
        assert ctx_a.state == ctx_b.state == "established"
        assert (ctx_a.local, ctx_b.local) == (A, B)
        try:
            listed = {c.id: c for c in tcp.contexts()}
            assert {ctx_a.id, ctx_b.id} <= set(listed)
            a_to_b = udp_packet(A, B, b"to B")
            b_to_a = udp_packet(B, A, b"to A")
            wire = unix.send("outbound", [a_to_b, b_to_a])
            assert all(r.drop is None and r.packet[9] == 50 for r in wire)  # ESP
            back = tcp.send("inbound", [r.packet for r in wire])
            assert [r.packet for r in back] == [a_to_b, b_to_a]
            a, b = unix.context(ctx_a.id), tcp.context(ctx_b.id)
            assert (a.packets_out, a.packets_in, b.packets_out, b.packets_in) == (1, 1, 1, 1)
            stats = unix.statistics()
            assert stats["aggregateSaStatistics"]["activeSas"] >= 4
            metrics = tcp.metrics()
            spi = f"0x{out_a['spi']:08x}"
            assert (f'ipsecsa_sa_packets_total{{context="{ctx_a.id}",direction="outbound",'
                    f'protocol="esp",spi="{spi}"}} 1.0') in metrics
            assert 'ipsecsa_contexts{state="established"}' in metrics
            assert "ipsecsa_http_request_seconds_bucket" in metrics
            assert "key" not in metrics.lower().replace("keepalive", "")
        finally:
            unix.delete(ctx_a.id)
            unix.delete(ctx_b.id)
        assert {ctx_a.id, ctx_b.id}.isdisjoint(c.id for c in unix.contexts())


def test_replay_dropped_and_counted(server: Server) -> None:
    out, inb = pair(8)
    with server.client() as c:
        ctx_a = c.create_context(outbound=out, inbound=inb)
        ctx_b = c.create_context(outbound=inb, inbound=out)
        try:
            wire = c.outbound(udp_packet(A, B))
            assert c.inbound(wire.packet).drop is None
            again = c.inbound(wire.packet)
            assert again.packet is None and again.drop.value == "replay"
            assert c.context(ctx_b.id).inbound[0].drops == {"replay": 1}
            spi = f"0x{out['spi']:08x}"
            assert (f'ipsecsa_sa_drops_total{{context="{ctx_b.id}",direction="inbound",'
                    f'protocol="esp",reason="replay",spi="{spi}"}} 1.0') in c.metrics()
        finally:
            c.delete(ctx_a.id)
            c.delete(ctx_b.id)


def test_expire_delete_and_not_found(server: Server) -> None:
    out, inb = pair(2)
    with server.client() as c:
        ctx = c.create_context(outbound=out, inbound=inb)
        c.expire(ctx.id)
        assert c.context(ctx.id).state == "expiring"
        c.delete(ctx.id)
        with pytest.raises(api.NotFound) as err:
            c.context(ctx.id)
        assert err.value.field == "context_id"
        with pytest.raises(api.NotFound):
            c.delete(ctx.id)


def test_step_by_step(server: Server) -> None:
    """filters, Create, GetSpi, AddInbound, AddOutbound, as IKE would drive them."""
    with server.client() as c:
        fin = c.add_ipsec_filter("inbound", local="192.0.2.10", remote="198.51.100.20")
        fout = c.add_ipsec_filter("outbound", local="192.0.2.10", remote="198.51.100.20")
        ctx = c.new_context(local="192.0.2.10", remote="198.51.100.20", outbound_filter=fout)
        assert ctx.state == "created"
        spi = c.get_spi(ctx.id, inbound_filter=fin)
        assert 0xC0000000 <= spi <= 0xCFFFFFFF
        c.add_inbound(ctx.id, esp(spi, "198.51.100.20", "192.0.2.10", "03"))
        done = c.add_outbound(ctx.id, esp(0xC0000999, "192.0.2.10", "198.51.100.20", "04"))
        assert done.state == "established" and done.inbound_spi == spi
        with pytest.raises(api.InUse):
            c.delete_filter(fout)
        c.delete(ctx.id)
        c.delete_filter(fin)
        c.delete_filter(fout)


def test_events_stream(server: Server) -> None:
    """added and deleted for a context made and deleted while a watcher streams."""
    seen: list[api.ContextEvent] = []
    added = threading.Event()

    def watch() -> None:
        with server.client() as c:
            ids = set()
            for event in c.events(timeout=10):
                seen.append(event)
                if event.kind == "added":
                    ids.add(event.context_id)
                    added.set()
                elif event.context_id in ids:
                    return

    thread = threading.Thread(target=watch)
    thread.start()
    out, inb = pair(3)
    with server.client() as c:
        for _ in range(100):  # until the watcher's subscription is in place
            ctx = c.create_context(outbound=out, inbound=inb)
            c.delete(ctx.id)
            if added.wait(0.1):
                break
        thread.join(15)
    assert not thread.is_alive()
    assert [e.kind for e in seen[-2:]] == ["added", "deleted"]
    assert seen[-1].context_id == seen[-2].context_id


def test_unauthenticated_and_unauthorized_change_nothing(server: Server) -> None:
    out, inb = pair(4)
    with server.client() as admin:
        made = admin.create_token("alice", "read,enum")
        assert made["rights"] == ["FWPM_ACTRL_ENUM", "FWPM_ACTRL_READ"]
        ctx = admin.create_context(outbound=out, inbound=inb)
        before = [c.to_dict() for c in admin.contexts()]
        with _raw(server) as anon:
            r = anon.get("/v1/contexts")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert anon.delete(f"/v1/contexts/{ctx.id}").status_code == 401
        with _raw(server, "ipsecsa_forged") as forged:
            assert forged.delete(f"/v1/contexts/{ctx.id}").status_code == 401
            assert forged.post("/v1/contexts", json={"outbound": out, "inbound": inb}
                               ).status_code == 401
        with server.client(made["token"], tcp=True) as alice:
            assert alice.whoami() == {"principal": "alice", "token_id": made["id"],
                                      "rights": ["FWPM_ACTRL_ENUM", "FWPM_ACTRL_READ"]}
            assert {c.id for c in alice.contexts()} == {c["id"] for c in before}
            assert alice.context(ctx.id).id == ctx.id
            with pytest.raises(api.AccessDenied) as denied:
                alice.delete(ctx.id)
            assert denied.value.status_name == "ERROR_ACCESS_DENIED"
            with pytest.raises(api.AccessDenied):
                alice.expire(ctx.id)
            o2, i2 = pair(5)
            with pytest.raises(api.AccessDenied):
                alice.create_context(outbound=o2, inbound=i2)
            with pytest.raises(api.AccessDenied):
                alice.statistics()  # no READ_STATS
            with pytest.raises(Forbidden):
                alice.create_token("mallory", "all")
        assert [c.to_dict() for c in admin.contexts()] == before
        assert "mallory" not in {t["principal"] for t in admin.tokens()}
        admin.revoke_token(made["id"])
        with server.client(made["token"]) as alice, pytest.raises(Unauthorized):
            alice.contexts()
        admin.delete(ctx.id)


def test_rights_are_the_engines(server: Server) -> None:
    """A principal with add and delete may create and delete; its grant is the engine's."""
    with server.client() as admin:
        made = admin.create_token("LAB\\bob", "FWPM_ACTRL_ADD,add_link,fwpm_actrl_read,Enum,delete")
        out, inb = pair(6)
        with server.client(made["token"]) as bob:
            ctx = bob.create_context(outbound=out, inbound=inb)
            bob.delete(ctx.id)
        admin.revoke_token(made["id"])


@pytest.mark.parametrize("body, status, field", [
    (b'{"outbound": {', 400, "body"),
    (b'[1, 2]', 422, "body"),
    (json.dumps({"outbound": {}, "inbound": {}, "extra": 1}).encode(), 422, "extra"),
    (json.dumps({"outbound": "x", "inbound": {}}).encode(), 422, "outbound"),
    (json.dumps({"inbound": {}}).encode(), 422, "outbound"),
])
def test_malformed_create(server: Server, body: bytes, status: int, field: str) -> None:
    with _raw(server, server.admin_token) as http:
        r = http.post("/v1/contexts", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert r.json()["error"]["field"] == field
        assert field in r.json()["error"]["message"] or field == "body"
        assert http.get("/v1/health").status_code == 200


def test_bad_sa_descriptions_name_the_field(server: Server) -> None:
    out, inb = pair(7)
    short = dict(inb, encryption={"algorithm": "aes-gcm-16", "key": "02" * 7})
    with server.client() as c:
        before = c.contexts()
        with pytest.raises(api.InvalidArgument) as err:
            c.create_context(outbound=out, inbound=short)
        assert err.value.field.startswith("inbound.encryption")
        with pytest.raises(api.InvalidArgument) as err:
            c.create_context(outbound=dict(out, spi="x"), inbound=inb)
        assert err.value.field == "outbound.spi"
        assert c.contexts() == before
    with _raw(server, server.admin_token) as http:
        r = http.post("/v1/contexts", json={"outbound": dict(out, mode="sideways"),
                                            "inbound": inb})
        assert r.status_code == 400 and r.json()["error"]["field"] == "outbound.mode"


def test_malformed_packets_and_sizes(server: Server) -> None:
    with _raw(server, server.admin_token) as http:
        r = http.post("/v1/packets", json={"direction": "outbound", "packets": ["not base64!"]})
        assert r.status_code == 400 and r.json()["error"]["field"] == "packets[0]"
        r = http.post("/v1/packets", json={"direction": "sideways", "packets": []})
        assert r.status_code == 422 and r.json()["error"]["field"] == "direction"
        r = http.post("/v1/packets", json={"direction": "inbound", "packets": [5]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "packets[0]"
        junk = base64.b64encode(b"\x45" + b"\x00" * 5).decode()
        r = http.post("/v1/packets", json={"direction": "inbound", "packets": [junk]})
        assert r.status_code == 200 and r.json()["results"][0]["drop"] is not None
        r = http.post("/v1/packets", json={"direction": "inbound", "packets": [junk] * 1025})
        assert r.status_code == 422 and r.json()["error"]["field"] == "packets"
        big = b"[" + b"0," * (8 * 1024 * 1024) + b"0]"  # 16 MiB + 2
        r = http.post("/v1/contexts", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(17):
                yield b" " * (1024 * 1024)

        r = http.post("/v1/contexts", content=chunks(),
                      headers={"content-type": "application/json"})
        assert r.status_code == 413
    with _raw(server, server.admin_token) as http:
        assert http.get("/v1/contexts/abc").status_code == 422
        assert http.get("/v1/nothing").status_code == 404
        assert http.get("/v1/health").json() == {"status": "ok"}


def test_oversized_body_answered_before_body_then_drained(server: Server) -> None:
    """The 413 for a too-large Content-Length comes before any of the body is sent; the body
    the client then sends anyway is read and dropped, and the connection ends with an orderly
    close, not a reset that could have destroyed the answer (the CI flake this replaced)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        size = 17 * 1024 * 1024
        s.sendall(b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + server.admin_token.encode() + b"\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Content-Length: " + str(size).encode() + b"\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["field"] == "body"
        s.sendall(b" " * size)  # all of it is read: no reset, then the server closes
        assert s.recv(65536) == b""


def test_token_rights_validation(server: Server) -> None:
    with _raw(server, server.admin_token) as http:
        r = http.post("/v1/tokens", json={"principal": "carol", "rights": "read,fly"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "rights"
        assert "fly" in r.json()["error"]["message"]
        r = http.post("/v1/tokens", json={"principal": "Everyone", "rights": "all"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "principal"
        r = http.delete("/v1/tokens/nosuch")
        assert r.status_code == 404
    with server.client() as c:
        tokens = c.tokens()
        assert all("token" not in t and "sha256" not in t for t in tokens)
        assert any(t["principal"] == "admin" and t["rights"] == ["all"] for t in tokens)


def test_client_without_service(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ipsecsa.client import ServiceUnavailable

    with Client(socket=str(tmp_path / "none.sock"), token="x") as c, \
            pytest.raises(ServiceUnavailable) as err:
        c.contexts()
    assert "no ipsecsa service at" in str(err.value) and "ipsecsa serve" in str(err.value)


def test_openapi_document_is_valid(server: Server) -> None:
    """The served document passes openapi-spec-validator (it checks against the OpenAPI
    Initiative's published schemas)."""
    from openapi_spec_validator import validate

    validate(httpx.get(server.url + "/openapi.json").json())


def test_zz_every_operation_answered_2xx(server: Server) -> None:
    """Runs last in this module: the service's own request counters show that the tests above
    got a 2xx from every operation of the OpenAPI document."""
    doc = httpx.get(server.url + "/openapi.json").json()
    with server.client() as c:
        text = c.metrics()
    ok = set()
    for line in text.splitlines():
        if line.startswith("ipsecsa_http_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels["status"].startswith("2"):
                ok.add((labels["method"].lower(), labels["route"]))
    wanted = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert wanted - ok == set()


def test_method_not_allowed_names_the_resources_methods(server: Server) -> None:
    """405's Allow lists every method of the resource (Starlette alone named only those of the
    first route whose path matched), and a literal path is not mistaken for a parameter."""
    with httpx.Client(base_url=server.url) as http:
        for path, allow in (("/v1/contexts", "GET, POST"), ("/v1/contexts/new", "POST"),
                            ("/v1/contexts/5", "DELETE, GET"), ("/v1/tokens/x", "DELETE")):
            r = http.request("OPTIONS", path)
            assert (r.status_code, r.headers["allow"]) == (405, allow), path
            assert r.json()["error"]["status_name"] == "METHOD_NOT_ALLOWED"
