"""``track``: nesting (inner wins, outer restored), isolation per thread and per asyncio task,
sync/async context manager and decorator, operation records rolling up their calls."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tracked_openai
from tests.helpers.clients import fixture_responder, make_clients
from tracked_openai import current_scope, track
from tracked_openai.records import LATE_TAG, OperationRecord, record_from_dict

MSG = [{"role": "user", "content": "x"}]


@pytest.fixture
def chat(fake):
    fake.add("POST", "/chat/completions", fixture_responder("chat_gpt5_nano_reasoning"))
    fake.add("POST", "/embeddings", fixture_responder("embeddings_3small_token_ids"))
    return fake


def _ask(client):
    return client.chat.completions.create(model="gpt-5-nano", messages=MSG)


def test_nesting_inner_wins_outer_restored(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=False)
    assert current_scope() is None
    with track("outer_feature", "outer_op", team="a") as outer:
        _ask(client)
        with track("inner_feature", "inner_op", step="2") as inner:
            assert current_scope() is inner
            _ask(client)
            with track(None, "innermost") as innermost:
                _ask(client)
        assert current_scope() is outer
        _ask(client)
    assert current_scope() is None
    _ask(client)

    calls = records.calls
    assert [c.feature for c in calls] == [
        "outer_feature",
        "inner_feature",
        "inner_feature",  # feature=None inherits the enclosing block's
        "outer_feature",
        "default",
    ]
    assert [c.operation for c in calls] == ["outer_op", "inner_op", "innermost", "outer_op", None]
    assert calls[0].parent_id == outer.record_id
    assert calls[1].parent_id == inner.record_id
    assert calls[2].parent_id == innermost.record_id
    assert calls[3].parent_id == outer.record_id
    assert calls[4].parent_id is None
    assert calls[1].tags == {"team": "a", "step": "2"}
    assert calls[0].tags == {"team": "a"}

    ops = {op.operation: op for op in records.operations}
    assert ops["inner_op"].parent_id == outer.record_id
    assert ops["innermost"].parent_id == inner.record_id
    # Operations roll up their own calls and those of nested operations.
    assert ops["innermost"].call_count == 1
    assert ops["inner_op"].call_count == 2
    assert ops["outer_op"].call_count == 4
    assert ops["outer_op"].usage.output_tokens == 4 * 228
    assert ops["outer_op"].usage.reasoning_tokens == 4 * 192
    assert ops["outer_op"].function == "test_nesting_inner_wins_outer_restored"
    assert all(op.status == "success" and op.duration_s is not None for op in ops.values())


def test_error_in_block_is_recorded_and_reraised(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=False)
    err = ValueError("bad input")
    with pytest.raises(ValueError) as info, track("outer"), track("inner", "failing"):
        _ask(client)
        raise err
    assert info.value is err
    assert current_scope() is None
    failing = next(op for op in records.operations if op.operation == "failing")
    assert failing.status == "error"
    assert failing.error_type == "ValueError"
    assert failing.error_message == "bad input"
    assert "raise err" in (failing.traceback or "")
    assert failing.call_count == 1
    (call,) = records.calls
    assert call.status == "success"  # the call itself succeeded


async def test_async_context_manager_and_decorator(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=True)

    @track("deco_feature")
    async def summarize() -> str:
        await client.chat.completions.create(model="gpt-5-nano", messages=MSG)
        return "done"

    async with track("async_feature", "async_op") as op:
        assert current_scope() is op
        assert await summarize() == "done"
        assert current_scope() is op
        await client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="base64")
    assert current_scope() is None
    calls = records.calls
    assert [c.feature for c in calls] == ["deco_feature", "async_feature"]
    deco = next(o for o in records.operations if o.feature == "deco_feature")
    assert deco.operation == "test_async_context_manager_and_decorator.<locals>.summarize"
    assert deco.parent_id == op.record_id
    outer = next(o for o in records.operations if o.feature == "async_feature")
    assert outer.call_count == 2


def test_sync_decorator_keeps_signature_and_result(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=False)

    @track("deco", "named_op", customer="acme")
    def work(n: int, *, label: str = "x") -> tuple[int, str]:
        """Docstring kept."""
        _ask(client)
        return n * 2, label

    assert work.__name__ == "work" and work.__doc__ == "Docstring kept."
    assert work(21, label="y") == (42, "y")
    (op,) = records.operations
    assert op.operation == "named_op" and op.tags == {"customer": "acme"}
    assert op.function.endswith("work")
    (call,) = records.calls
    assert call.parent_id == op.record_id and call.tags == {"customer": "acme"}


def test_threads_are_isolated(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=False)
    barrier = threading.Barrier(4)

    def worker(i: int) -> str | None:
        with track(f"feature_{i}", f"op_{i}"):
            barrier.wait(timeout=10)
            _ask(client)
            barrier.wait(timeout=10)
            _ask(client)
            scope = current_scope()
            return scope.feature if scope else None

    with track("main_feature"):
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(worker, range(4)))
        assert current_scope().feature == "main_feature"
    assert results == [f"feature_{i}" for i in range(4)]
    calls = records.calls
    assert len(calls) == 8
    for i in range(4):
        mine = [c for c in calls if c.feature == f"feature_{i}"]
        assert len(mine) == 2 and {c.operation for c in mine} == {f"op_{i}"}
    ops = {o.feature: o for o in records.operations}
    # Threads do not inherit the main thread's scope: their operations are top level.
    assert all(ops[f"feature_{i}"].parent_id is None for i in range(4))
    assert ops["main_feature"].call_count == 0


async def test_asyncio_tasks_are_isolated(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=True)

    async def task(i: int) -> str:
        async with track(f"task_{i}"):
            for _ in range(2):
                await asyncio.sleep(0)
                await client.chat.completions.create(model="gpt-5-nano", messages=MSG)
            await asyncio.sleep(0)
            return current_scope().feature

    async with track("parent") as parent:
        results = await asyncio.gather(*(task(i) for i in range(5)))
        assert current_scope() is parent
    assert results == [f"task_{i}" for i in range(5)]
    calls = records.calls
    assert len(calls) == 10
    for i in range(5):
        assert len([c for c in calls if c.feature == f"task_{i}"]) == 2
    ops = {o.feature: o for o in records.operations}
    # Tasks copy the context at creation: their operations nest under the parent.
    assert all(ops[f"task_{i}"].parent_id == parent.record_id for i in range(5))
    assert ops["parent"].call_count == 10


def test_operation_handle_metrics_params_tags(records) -> None:
    with track("f", "op") as op:
        op.log_metrics({"score": 0.5}, latency=3, bad="x")
        op.log_params(k="v")
        op.set_tags(env="test")
    (rec,) = records.operations
    assert rec.metrics == {"score": 0.5, "latency": 3.0}
    assert rec.params == {"k": "v"}
    assert rec.tags == {"env": "test"}
    data = rec.to_dict()
    assert data["kind"] == "operation" and data["call_count"] == 0


def test_default_feature_outside_track(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=False)
    tracked_openai.configure(default_feature="unassigned")
    try:
        _ask(client)
    finally:
        tracked_openai.configure(default_feature="default")
    (call,) = records.calls
    assert call.feature == "unassigned" and call.parent_id is None and call.operation is None


async def test_to_thread_inherits_the_scope(chat, records) -> None:
    client, _, _ = make_clients(chat, is_async=False)
    async with track("offloaded", "op") as op:
        await asyncio.to_thread(_ask, client)
    (call,) = records.calls
    assert call.feature == "offloaded" and call.parent_id == op.record_id
    (rec,) = records.operations
    assert rec.call_count == 1


def test_copy_context_run_in_a_thread_pool(chat, records) -> None:
    import contextvars

    client, _, _ = make_clients(chat, is_async=False)
    with track("fanout") as op:
        ctx = contextvars.copy_context()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: ctx.copy().run(_ask, client), range(2)))
    assert {c.parent_id for c in records.calls} == {op.record_id}
    (rec,) = records.operations
    assert rec.call_count == 2


def _stream_client(fake):
    from tests.helpers.clients import usage_aware_stream

    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    client, _, _ = make_clients(fake, is_async=False)
    return client


def test_stream_returned_from_decorated_function_is_rolled_up(fake, records) -> None:
    """A handler returning a stream (read later, e.g. by a streaming HTTP response): its
    operation waits for the stream, so the roll-up includes it."""
    client = _stream_client(fake)

    @track("streaming_feature")
    def start():
        return client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)

    stream = start()
    records.flush()
    assert records.operations == []  # held back while the stream is open
    list(stream)
    (call,) = records.calls
    (op,) = records.operations
    assert call.parent_id == op.record_id
    assert op.call_count == 1 and op.usage.input_tokens == 12
    assert op.cost_usd is not None and op.cost_usd == call.cost.total_usd
    assert LATE_TAG not in call.tags


async def test_async_stream_outliving_nested_blocks_is_rolled_up_by_each(fake, records) -> None:
    from tests.helpers.clients import usage_aware_stream

    fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
    client, _, _ = make_clients(fake, is_async=True)
    async with track("outer_feature", "outer"), track(None, "inner"):
        stream = await client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    records.flush()
    assert records.operations == []
    async for _ in stream:
        pass
    await client.close()
    (call,) = records.calls
    ops = {op.operation: op for op in records.operations}
    assert set(ops) == {"outer", "inner"}
    assert ops["inner"].call_count == ops["outer"].call_count == 1
    assert call.parent_id == ops["inner"].record_id


def test_abandoned_stream_releases_its_operation(fake, records) -> None:
    import gc

    client = _stream_client(fake)
    with track("streaming_feature", "dropped"):
        stream = client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    del stream
    gc.collect()
    (call,) = records.calls
    (op,) = records.operations
    assert call.stream_end == "abandoned" and op.call_count == 1


def test_operation_waits_no_longer_than_its_deadline(fake, records, monkeypatch) -> None:
    """A stream kept open past the wait: the operation is submitted with what it has, and the
    stream's call, when it ends, is marked late (reports count its cost by itself)."""
    from tracked_openai import scope as _context

    client = _stream_client(fake)
    monkeypatch.setattr(_context, "OPERATION_WAIT_S", 0.0)
    with track("streaming_feature", "slow_reader"):
        stream = client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    with track("streaming_feature", "next_request"):
        pass  # any operation ending releases the overdue ones
    records.flush()
    assert sorted(op.operation for op in records.operations) == ["next_request", "slow_reader"]
    list(stream)
    (call,) = records.calls
    slow = next(op for op in records.operations if op.operation == "slow_reader")
    assert slow.call_count == 0 and call.parent_id == slow.record_id
    assert call.tags[LATE_TAG] == "true"


def test_shutdown_submits_operations_still_waiting(fake, records) -> None:
    client = _stream_client(fake)
    with track("streaming_feature", "open_at_exit"):
        stream = client.chat.completions.create(model="gpt-4", messages=MSG, stream=True)
    tracked_openai.shutdown(10)
    (op,) = records.operations
    assert op.operation == "open_at_exit" and op.call_count == 0
    stream.close()
    (call,) = records.calls
    assert call.tags[LATE_TAG] == "true"


def test_exit_with_an_open_stream_keeps_the_operation(tmp_path) -> None:
    """A process that exits while an operation waits for a stream still exports the operation."""
    import json
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "records.jsonl"
    script = textwrap.dedent(
        f"""
        import tracked_openai
        from tracked_openai.sinks import JsonlSink
        from tests.helpers.fakeopenai import FakeOpenAI
        from tests.helpers.clients import usage_aware_stream

        tracked_openai.configure(sinks=[JsonlSink({str(out)!r})])
        fake = FakeOpenAI()
        fake.add("POST", "/chat/completions", usage_aware_stream("chat_stream_gpt4_include_usage"))
        client = tracked_openai.OpenAI(api_key="sk-test", http_client=fake.sync_client(), max_retries=0)
        with tracked_openai.track("exit_feature", "left_open"):
            kept = client.chat.completions.create(
                model="gpt-4", messages=[{{"role": "user", "content": "x"}}], stream=True
            )
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2],
                   timeout=120)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    (op,) = [r for r in rows if r["kind"] == "operation"]
    (call,) = [r for r in rows if r["kind"] == "call"]
    # The open stream is recorded at exit, which completes its operation's roll-up.
    assert op["operation"] == "left_open" and op["call_count"] == 1
    assert call["stream_end"] == "abandoned" and call["parent_id"] == op["record_id"]


def test_a_call_belongs_to_its_innermost_feature(chat, records) -> None:
    """Roll-ups include nested operations' calls; the share of the run's own feature is kept
    apart only when a nested operation of another feature made some of them."""
    client, _, _ = make_clients(chat, is_async=False)
    with track("checkout", "place_order") as checkout:
        _ask(client)
        with track("fraud_check", "score") as fraud:
            _ask(client)
            with track("checkout", "recheck") as recheck:  # back in checkout, under fraud_check
                _ask(client)
        with track(None, "confirm"):  # same feature: part of checkout's own share
            client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
    assert checkout is not None and fraud is not None and recheck is not None

    calls = records.calls
    assert [c.feature for c in calls] == ["checkout", "fraud_check", "checkout", "checkout"]
    ops = {op.operation: op for op in records.operations}
    assert ops["place_order"].parent_feature is None
    assert ops["score"].parent_feature == "checkout" and ops["score"].parent_id == checkout.record_id
    assert ops["recheck"].parent_feature == "fraud_check"
    assert ops["confirm"].parent_feature == "checkout"

    cost = [c.cost.total_usd for c in calls if c.cost is not None]
    assert len(cost) == 4
    outer = ops["place_order"]
    assert outer.call_count == 4 and outer.cost_usd == sum(cost)
    # The fraud check's call, and the recheck made inside it, belong to the runs of their own
    # feature (score, recheck): not to place_order's share, though its roll-up has them.
    assert outer.feature_call_count == 2 and outer.feature_cost_usd == cost[0] + cost[3]
    score = ops["score"]
    assert score.call_count == 2 and score.cost_usd == cost[1] + cost[2]
    assert score.feature_call_count == 1 and score.feature_cost_usd == cost[1]
    # Nothing of another feature inside: no separate share.
    assert ops["recheck"].feature_call_count is None and ops["recheck"].feature_cost_usd is None
    assert ops["confirm"].feature_call_count is None
    # The models the calls used, each once.
    assert outer.models == ["gpt-5-nano", "text-embedding-3-small"]
    assert score.models == ["gpt-5-nano"]
    # The spool keeps all of it.
    back = record_from_dict(outer.to_dict())
    assert isinstance(back, OperationRecord)
    assert (back.feature_call_count, back.feature_cost_usd) == (2, cost[0] + cost[3])
    assert back.models == outer.models and back.cost_usd == outer.cost_usd
    assert record_from_dict(score.to_dict()).parent_feature == "checkout"  # type: ignore[union-attr]


def test_boolean_tags_are_true_false(records) -> None:
    with track("f", "op", cached=True) as op:
        assert op is not None
        op.set_tags(retried=False, attempt=2)
    (rec,) = records.operations
    assert rec.tags == {"cached": "true", "retried": "false", "attempt": "2"}
