"""Keyword-event worker: templates, and events -> answers over a real Redis with the real engine."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import pytest
from wakeline.v1 import bus_pb2

from services.worker.prompts import PromptBook


def _event(keyword="lights on", node="edge-a", device="dev-1", **attrs) -> bus_pb2.KeywordEvent:
    return bus_pb2.KeywordEvent(event_id=uuid.uuid4().hex, trace_id=uuid.uuid4().hex, device_id=device,
                                edge_node=node, keyword=keyword, score=0.9, created_unix_ms=int(time.time() * 1000),
                                attributes=attrs)


def test_templates_per_keyword_from_yaml_and_json(tmp_path):
    yml = tmp_path / "t.yaml"
    yml.write_text("system: Be brief.\nmax_tokens: 20\n"
                   "default:\n  user: \"Heard '{keyword}' from {device_id}.\"\n"
                   "keywords:\n  Lights On:\n    system: You run the lights.\n"
                   "    user: \"'{keyword}' in the {attr[room]}{attr[missing]} {nope}at {time}\"\n    max_tokens: 7\n")
    book = PromptBook.load(yml)
    msgs, tpl = book.render(_event("lights on", room="kitchen"))
    assert msgs[0] == {"role": "system", "content": "You run the lights."}
    assert msgs[1]["content"].startswith("'lights on' in the kitchen at 20")  # unknown fields render empty
    assert tpl.max_tokens == 7
    msgs, tpl = book.render(_event("stop music", device="dev-9"))
    assert msgs == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Heard 'stop music' from dev-9."}]
    assert tpl.max_tokens is None and book.max_tokens == 20
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"keywords": {"x": {"usr": "typo"}}}))
    with pytest.raises(ValueError, match="keywords.x has unknown fields"):
        PromptBook.load(js)
    default = PromptBook().render(_event("open door", device="d-7", room="hall"))[0]
    assert default[0]["content"].startswith("You are Wakeline")
    assert re.fullmatch(r"The user said 'open door' in the hall on device d-7 at \d\d:\d\d\.", default[1]["content"])
    assert "in the" not in PromptBook().render(_event("open door"))[0][1]["content"]


@pytest.fixture(scope="module")
def engine_mod():
    return pytest.importorskip("llm.engine", reason="the LLM engine (llm/engine.py) is not in this checkout yet")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, engine_mod):
    from services.llm.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


async def _replies(bus, node: str) -> list[bus_pb2.Answer]:
    from services.bus.core import decode

    return [decode(f) for _, f in await bus.redis.xrange(bus.keys.replies(node))]


async def _consume(bus, worker, n_expected: int, group="llm", name="w1", timeout=60.0):
    from services.bus import EventConsumer

    cons = EventConsumer(bus, group, name, concurrency=8)
    task = asyncio.create_task(cons.run(worker.handle))
    end = time.monotonic() + timeout
    while cons.handled + cons.duplicates < n_expected and time.monotonic() < end:
        await asyncio.sleep(0.05)
    cons.stop()
    await asyncio.wait_for(task, 30)
    return cons


@pytest.mark.parametrize("backend", ["local", "grpc"])
def test_events_become_answers_on_the_owning_nodes_stream(engine_mod, tiny_model, redis_url, tmp_path, backend):
    from services.bus import BusConfig, EventProducer, open_bus
    from services.llm.runner import EngineRunner
    from services.llm.server import LlmServer, LlmSettings
    from services.worker.settings import WorkerSettings
    from services.worker.worker import GrpcBackend, KeywordWorker, LocalBackend, answer_id

    async def go():
        bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
        srv = None
        if backend == "local":
            runner = EngineRunner(engine_mod.Engine.from_pretrained(str(tiny_model)))
            runner.start()
            be = LocalBackend(runner)
        else:
            srv = LlmServer(LlmSettings(model=tiny_model, port=0, grace_s=0))
            port = await srv.start()
            be = await GrpcBackend.open(WorkerSettings(llm_target=f"127.0.0.1:{port}"))
        worker = KeywordWorker(be, PromptBook(), max_tokens=6)
        events = [_event(node="edge-a" if i % 2 else "edge-b", device=f"dev-{i}") for i in range(12)]
        prod = EventProducer(bus, tmp_path / "spool")
        await prod.publish_events(events + [events[0], events[3]])  # two duplicates (e.g. a spool replay)
        assert await prod.flush(5)
        cons = await _consume(bus, worker, 14)
        got = await _replies(bus, "edge-a") + await _replies(bus, "edge-b")
        assert cons.duplicates == 2 and cons.handled == 12
        assert sorted(a.event_id for a in got) == sorted(e.event_id for e in events)
        for a in await _replies(bus, "edge-a"):
            assert a.edge_node == "edge-a"
        by_id = {e.event_id: e for e in events}
        for a in got:
            e = by_id[a.event_id]
            assert a.answer_id == answer_id(e.event_id) and a.device_id == e.device_id
            assert a.trace_id == e.trace_id and a.keyword == e.keyword and not a.error
            assert a.usage.completion_tokens == 6 and a.usage.prompt_tokens > 10 and a.ttft_ms > 0
        await prod.close()
        await be.close()
        if srv:
            await srv.stop(0)
        await bus.close()

    asyncio.run(go())


def test_unanswerable_event_gets_an_error_answer_not_a_retry_loop(engine_mod, tiny_model, redis_url, tmp_path):
    from services.bus import BusConfig, EventProducer, open_bus
    from services.llm.runner import EngineRunner
    from services.worker.worker import KeywordWorker, LocalBackend

    async def go():
        bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
        runner = EngineRunner(engine_mod.Engine.from_pretrained(str(tiny_model)))
        runner.start()
        book = PromptBook.from_dict({"default": {"user": "{keyword} " * 2}})
        worker = KeywordWorker(LocalBackend(runner), book, max_tokens=4)
        ev = _event(keyword="lights on " * 400)  # far over the 512-token context
        prod = EventProducer(bus, tmp_path / "spool")
        await prod.publish_event(ev)
        cons = await _consume(bus, worker, 1)
        (a,) = await _replies(bus, "edge-a")
        assert cons.failures == 0 and a.event_id == ev.event_id
        assert "context" in a.error and not a.text
        await prod.close()
        await runner.stop()
        await bus.close()

    asyncio.run(go())
