"""Log lines name their role, worker and call: as text, and as JSON lines a shipper reads."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from sipfleet import logcontext


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """``configure``'s handler, writing to a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    logcontext.configure("info", "json", role="proxy")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logcontext.set_worker(0)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_names_the_role_the_worker_and_the_call(captured: io.StringIO) -> None:
    logcontext.set_worker(2)
    token = logcontext.CALL_ID.set("a84b4c76e66710@pc33")
    try:
        logging.getLogger("sipfleet.core").warning("target %s unreachable", "sip:bob@x")
    finally:
        logcontext.CALL_ID.reset(token)
    logging.getLogger("sipfleet.core").info("pool changed")
    about_call, other = lines(captured)
    assert about_call["message"] == "target sip:bob@x unreachable"
    assert (about_call["level"], about_call["logger"]) == ("WARNING", "sipfleet.core")
    assert (about_call["role"], about_call["worker"]) == ("proxy", 2)
    assert about_call["call_id"] == "a84b4c76e66710@pc33"
    assert str(about_call["time"]).startswith("20")
    assert other["call_id"] is None


def test_a_task_started_for_a_message_keeps_its_call_id(captured: io.StringIO) -> None:
    async def main() -> None:
        async def lookup() -> None:
            await asyncio.sleep(0)
            logging.getLogger("sipfleet.storage").info("slow lookup")

        token = logcontext.CALL_ID.set("call-7@x")
        task = asyncio.create_task(lookup())  # copies the context: the shell's routing
        logcontext.CALL_ID.reset(token)
        await task

    asyncio.run(main())
    (line,) = lines(captured)
    assert line["call_id"] == "call-7@x"


def test_a_traceback_stays_inside_its_json_line(captured: io.StringIO) -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("sipfleet").exception("failed")
    (line,) = lines(captured)
    assert "ValueError: bad" in str(line["exc_info"])
