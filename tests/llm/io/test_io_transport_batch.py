"""ModelTransport maps a batch's result lines back to the requests, whatever the provider."""

from __future__ import annotations

import logging

import msgspec
import pytest

from avm.errors import ModelError, RateLimited
from avm.llm.io.transport import ModelTransport, batch_custom_id
from avm.llm.types import Message, ModelReply, ModelRequest


class Line(msgspec.Struct):
    custom_id: str
    text: str = ""
    status: int = 200


DECODER = msgspec.json.Decoder(Line)


def requests(n: int) -> list[ModelRequest]:
    return [
        ModelRequest(model=f"m{i}", messages=(Message(role="user", content=f"q{i}"),))
        for i in range(n)
    ]


def answer(line: Line, model: str) -> ModelReply:
    if line.status == 429:
        raise RateLimited(f"{line.custom_id} throttled")
    return ModelReply(text=line.text, model=model)


def jsonl(*lines: object) -> bytes:
    return b"\n".join(
        line if isinstance(line, bytes) else msgspec.json.encode(line) for line in lines
    )


def test_custom_ids_number_the_requests() -> None:
    assert [batch_custom_id(i) for i in range(3)] == ["r0", "r1", "r2"]


def test_each_line_answers_the_request_its_custom_id_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = ModelTransport("http://127.0.0.1:9/v1")
    content = jsonl(
        Line(batch_custom_id(2), "two"),
        b"",
        Line(batch_custom_id(0), "zero"),
        Line(batch_custom_id(1), status=429),
        b"{not json",
        Line("r9", "beyond the batch"),
        Line("x1", "not an id of ours"),
    )
    with caplog.at_level(logging.WARNING, logger="avm.llm.io.transport"):
        results = transport.read_batch_results(content, DECODER, requests(4), answer)
    assert set(results) == {0, 1, 2}
    assert results[0] == ModelReply(text="zero", model="m0")
    assert results[2] == ModelReply(text="two", model="m2")
    assert isinstance(results[1], RateLimited)
    skipped = [r.getMessage() for r in caplog.records]
    assert skipped == [
        "http://127.0.0.1:9/v1: unreadable batch result line skipped",
        "http://127.0.0.1:9/v1: batch result for unknown request skipped",
        "http://127.0.0.1:9/v1: batch result for unknown request skipped",
    ]


def test_a_request_without_a_result_gets_an_error_naming_the_batch() -> None:
    transport = ModelTransport("http://127.0.0.1:9/v1")
    asked = requests(3)
    reply = ModelReply(text="one", model="m1")
    replies = transport.batch_replies(
        asked, {1: reply}, batch_id="batch_7", missing="no result, the batch expired"
    )
    assert replies[1] is reply
    for i in (0, 2):
        error = replies[i]
        assert type(error) is ModelError
        assert str(error) == f"batch batch_7 model 'm{i}': no result, the batch expired"
