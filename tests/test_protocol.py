"""The agent protocol: typed messages checked on both sides, and a version the agent checks."""

from __future__ import annotations

import pytest

from sparkctl.agent import node_agent, protocol
from sparkctl.agent.client import AgentError, decode_reply
from sparkctl.agent.protocol import ProtocolError, StatusRequest, from_wire, to_wire


def test_a_controller_of_another_version_gets_a_clear_error_not_a_key_error():
    wire = protocol.encode_request(StatusRequest(tag_prefix="c/n/", record_dir="/nonexistent"))
    reply = node_agent.handle({**wire, "v": protocol.PROTOCOL_VERSION + 1})
    assert reply["ok"] is False and reply["kind"] == "protocol-version"
    with pytest.raises(AgentError) as caught:
        decode_reply("n1", StatusRequest(tag_prefix="c/n/", record_dir="/x"), reply)
    assert caught.value.kind == "protocol-version"
    assert "protocol" in caught.value.message and "same sparkctl version" in (caught.value.hint or "")


def test_an_agent_of_another_version_gets_a_clear_error_on_the_controller():
    with pytest.raises(AgentError, match="speaks protocol 1") as caught:
        decode_reply("n1", StatusRequest(tag_prefix="c/", record_dir="/x"), {"ok": True, "records": []})
    assert caught.value.kind == "protocol-version"


def test_a_reply_that_does_not_match_its_type_names_the_field():
    request = StatusRequest(tag_prefix="c/", record_dir="/x")
    good = node_agent.handle(protocol.encode_request(request))
    assert decode_reply("n1", request, good).records == ()
    broken = {**good, "reply": {**good["reply"], "boot_id": 7}}
    with pytest.raises(AgentError, match=r"status reply\.boot_id: expected str") as caught:
        decode_reply("n1", request, broken)
    assert caught.value.kind == "bad-reply"
    del broken["reply"]["boot_id"]
    with pytest.raises(AgentError, match="missing field boot_id"):
        decode_reply("n1", request, broken)


def test_the_agent_refuses_a_malformed_request_with_the_field_named():
    reply = node_agent.handle({"v": protocol.PROTOCOL_VERSION, "op": "stop", "args": {"tag_prefix": 3}})
    assert reply == {"v": protocol.PROTOCOL_VERSION, "ok": False, "kind": "bad-request",
                     "error": "stop.tag_prefix: expected str, got 3"}
    reply = node_agent.handle({"v": protocol.PROTOCOL_VERSION, "op": "stop", "args": {"tag_prefix": "a", "pid": 1}})
    assert reply["kind"] == "bad-request" and "unknown field(s) pid" in reply["error"]
    assert node_agent.handle({"v": protocol.PROTOCOL_VERSION, "op": "nope", "args": {}})["kind"] == "bad-request"


@pytest.mark.parametrize("op", sorted(protocol.REQUESTS))
def test_every_operation_has_a_handler_and_its_requests_survive_the_wire(op):
    cls = protocol.REQUESTS[op]
    assert op in node_agent.OPS and cls.REPLY.__name__.endswith("Reply")
    required = {"argv": ["a", "b"], "log": "l", "record": "r", "tag": "t", "role": "x", "tag_prefix": "p",
                "record_dir": "d", "path": "f", "paths": ["f"], "temp_dir": "/tmp/ray", "grace_s": 1.0}
    fields = {f.name: required[f.name] for f in protocol.fields_of(cls) if f.name in required}
    request = from_wire(cls, fields)
    assert from_wire(cls, to_wire(request)) == request


def test_numbers_and_optionals_are_checked_not_coerced():
    with pytest.raises(ProtocolError, match="grace_s: expected float, got True"):
        from_wire(protocol.StopRequest, {"tag_prefix": "p", "grace_s": True})
    assert from_wire(protocol.StopRequest, {"tag_prefix": "p", "grace_s": 3}).grace_s == 3.0
    assert from_wire(protocol.LogCursor, {"path": "x", "offset": None}).offset is None
    with pytest.raises(ProtocolError, match=r"logs\[0\]\.offset"):
        from_wire(StatusRequest, {"tag_prefix": "p", "record_dir": "d", "logs": [{"path": "x", "offset": "0"}]})
