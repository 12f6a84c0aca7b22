"""The fake server's knobs and model: latency, fault injection, determinism, the radix cache,
the tokenizer, streaming cadence, routing errors and the CLI.

Latency is checked by structure (a stream is still in flight after its first chunk; aborts cut
it short), never by timing.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_client.testing import FakeServerConfig, FakeSGLangServer, create_fake_app
from sglang_client.testing._tokenizer import EOS_TOKEN_ID, TOKENIZER

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(seed=99) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: FakeSGLangServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def generate(client: httpx.Client, **body: Any) -> Any:
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream_chunks(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/generate", json={**body, "stream": True}) as response:
        raw = response.read()
    parts = [p[len(b"data: ") :] for p in raw.split(b"\n\n")[:-1]]
    assert parts[-1] == b"[DONE]"
    return [json.loads(p) for p in parts[:-1]]


# -- latency and aborts --------------------------------------------------------------------------


def test_latency_paces_tokens_without_changing_results(client: httpx.Client) -> None:
    params = {**GREEDY, "max_new_tokens": 20, "ignore_eos": True}
    expected = generate(client, text="paced", sampling_params=params)
    with (
        FakeSGLangServer(time_to_first_token=0.05, latency_per_token=0.02) as slow,
        httpx.Client(base_url=slow.url, timeout=10) as c,
    ):
        body = {"text": "paced", "rid": "paced-1", "stream": True, "sampling_params": params}
        with c.stream("POST", "/generate", json=body) as response:
            lines = response.iter_lines()
            first = json.loads(next(line for line in lines if line)[len("data: ") :])
            # The first token went out while the other 19 are still being generated.
            assert "paced-1" in slow.app.engine.inflight
            assert first["meta_info"]["completion_tokens"] == 1
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        last = json.loads(rest[-2][len("data: ") :])
        assert (last["text"], last["output_ids"]) == (expected["text"], expected["output_ids"])
        assert len(rest) == 20  # 19 more chunks + [DONE]
        assert generate(c, text="paced", sampling_params=params)["text"] == expected["text"]


@pytest.mark.anyio
async def test_abort_all_and_client_disconnect_abort_running_requests() -> None:
    async with FakeSGLangServer(latency_per_token=0.02) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as c:
            params = {"max_new_tokens": 300, "ignore_eos": True}
            texts: list[Any] = []

            async def run(prompt: str) -> None:
                body = {"text": prompt, "sampling_params": params}
                texts.append((await c.post("/generate", json=body)).json())

            async with anyio.create_task_group() as group:
                group.start_soon(run, "one")
                group.start_soon(run, "two")
                for _ in range(500):
                    if len(srv.app.engine.inflight) == 2:
                        break
                    await anyio.sleep(0.01)
                assert (await c.post("/abort_request", json={"abort_all": True})).status_code == 200
            assert [t["meta_info"]["finish_reason"]["type"] for t in texts] == ["abort", "abort"]

            # The engine counts an abort when the request's task winds down, which can be just
            # after its response went out: let both settle before taking the baseline.
            for _ in range(500):
                if srv.app.stats.aborted_requests >= 2 and not srv.app.engine.inflight:
                    break
                await anyio.sleep(0.01)
            before = srv.app.stats.aborted_requests
            assert before == 2
            body = {"text": "gone", "rid": "gone-1", "stream": True, "sampling_params": params}
            async with c.stream("POST", "/generate", json=body) as response:
                async for line in response.aiter_lines():
                    if line:
                        break  # hang up after the first chunk
            for _ in range(500):
                gone = "gone-1" not in srv.app.engine.inflight
                if gone and srv.app.stats.aborted_requests > before:
                    break
                await anyio.sleep(0.01)
            assert "gone-1" not in srv.app.engine.inflight
            assert srv.app.stats.aborted_requests == before + 1


# -- faults --------------------------------------------------------------------------------------


def test_fault_plan_fails_exactly_the_next_requests(
    server: FakeSGLangServer, client: httpx.Client
) -> None:
    server.app.faults.fail_next(2, "503")
    assert server.app.faults.pending == 2
    statuses = [client.post("/generate", json={"text": "x"}).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert server.app.faults.pending == 0
    server.app.faults.fail_next(1, "500")
    crashed = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert crashed.status_code == 500
    assert crashed.headers["content-type"].startswith("text/plain")
    assert crashed.text == "Internal Server Error"
    server.app.faults.fail_next(1, "503", path="/health")
    assert client.post("/generate", json={"text": "x"}).status_code == 200  # not that path
    unhealthy = client.get("/health")
    assert (unhealthy.status_code, unhealthy.content) == (503, b"")
    assert client.get("/health").status_code == 200
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.app.faults.fail_next(1, "teapot")


def test_connect_reset_and_hang_faults(server: FakeSGLangServer, client: httpx.Client) -> None:
    server.app.faults.fail_next(1, "connect_reset")
    with pytest.raises(httpx.TransportError):
        client.post("/generate", json={"text": "x"})
    assert client.post("/generate", json={"text": "x"}).status_code == 200
    server.app.faults.fail_next(1, "hang")
    with pytest.raises(httpx.ReadTimeout):
        client.post("/generate", json={"text": "x"}, timeout=httpx.Timeout(10, read=0.3))
    assert client.post("/generate", json={"text": "x"}).status_code == 200
    server.app.faults.fail_next(1, "hang", path="/model_info")
    server.app.faults.fail_next(1, "connect_reset", path="/health")
    with pytest.raises(httpx.ReadTimeout):
        client.get("/model_info", timeout=httpx.Timeout(10, read=0.3))
    with pytest.raises(httpx.TransportError):
        client.get("/health")
    assert client.get("/model_info").status_code == 200
    assert server.app.faults.pending == 0


def test_drop_stream_cuts_the_connection_after_a_chunk(
    server: FakeSGLangServer, client: httpx.Client
) -> None:
    server.app.faults.fail_next(1, "drop_stream")
    received: list[str] = []
    body = {"text": "x", "stream": True, "sampling_params": {"max_new_tokens": 8}}
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/generate", json=body) as response:
            assert response.status_code == 200
            received.extend(line for line in response.iter_lines() if line)
    assert received and all(line.startswith("data: {") for line in received)
    server.app.faults.fail_next(1, "drop_stream")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/generate", json={"text": "x"})
    assert client.post("/generate", json={"text": "x"}).status_code == 200


@pytest.mark.parametrize(
    ("knob", "expected"),
    [("fail_503_rate", 503), ("fail_500_rate", 500), ("drop_stream_rate", "dropped")],
)
def test_fault_rates_of_one_hit_every_request(knob: str, expected: object) -> None:
    with FakeSGLangServer(**{knob: 1.0}) as srv, httpx.Client(base_url=srv.url) as c:
        for _ in range(3):
            if expected == "dropped":
                with (
                    pytest.raises(httpx.RemoteProtocolError),
                    c.stream("POST", "/generate", json={"text": "x", "stream": True}) as response,
                ):
                    response.read()
                assert c.post("/generate", json={"text": "x"}).status_code == 200
            else:
                assert c.post("/generate", json={"text": "x"}).status_code == expected
                chat = {"messages": [{"role": "user", "content": "x"}]}
                assert c.post("/v1/chat/completions", json=chat).status_code == expected
        assert c.get("/health").status_code == 200


# -- determinism and the simulated radix cache ---------------------------------------------------


def test_greedy_is_identical_across_samples_and_requests(client: httpx.Client) -> None:
    params = {**GREEDY, "max_new_tokens": 24, "n": 3}
    first = [r["text"] for r in generate(client, text="Greedy", sampling_params=params)]
    second = [r["text"] for r in generate(client, text="Greedy", sampling_params=params)]
    assert len(set(first)) == 1 and first == second
    # Greedy continuation is consistent: feeding back part of the output yields the rest.
    ids = TOKENIZER.encode("Greedy")
    out = generate(
        client, input_ids=ids, sampling_params={**GREEDY, "max_new_tokens": 12, "ignore_eos": True}
    )["output_ids"]
    rest = generate(
        client,
        input_ids=ids + out[:5],
        sampling_params={**GREEDY, "max_new_tokens": 7, "ignore_eos": True},
    )
    assert rest["output_ids"] == out[5:]


def test_sampling_seed_is_reproducible_and_samples_differ(client: httpx.Client) -> None:
    params = {"temperature": 1.0, "max_new_tokens": 24, "ignore_eos": True, "n": 3}
    seeded = {**params, "sampling_seed": 42}
    first = [r["text"] for r in generate(client, text="Seeded", sampling_params=seeded)]
    again = [r["text"] for r in generate(client, text="Seeded", sampling_params=seeded)]
    assert first == again
    assert len(set(first)) == 3  # sample indices draw different seeds
    other = [
        r["text"]
        for r in generate(client, text="Seeded", sampling_params={**seeded, "sampling_seed": 43})
    ]
    assert other != first
    fresh_a = generate(client, text="Seeded", sampling_params={**params, "n": 1})["text"]
    fresh_b = generate(client, text="Seeded", sampling_params={**params, "n": 1})["text"]
    assert fresh_a != fresh_b  # no seed: the server RNG samples afresh


def test_cached_tokens_report_real_prefix_reuse(client: httpx.Client) -> None:
    assert client.post("/flush_cache").status_code == 200
    prompt = "A fairly long prompt about the river and the city and the sun"
    length = len(TOKENIZER.encode(prompt))
    params = {**GREEDY, "max_new_tokens": 4, "ignore_eos": True}
    cold = generate(client, text=prompt, sampling_params=params)
    assert cold["meta_info"]["cached_tokens"] == 0
    warm = generate(client, text=prompt, sampling_params=params)
    assert warm["meta_info"]["cached_tokens"] == length - 1  # the last token is recomputed
    extended = generate(client, text=prompt + cold["text"] + " more", sampling_params=params)
    # All but the last generated token: as in SGLang, that one has no KV yet.
    assert extended["meta_info"]["cached_tokens"] == length + 3
    samples = generate(client, text="Fresh prompt for n", sampling_params={**params, "n": 2})
    n_len = len(TOKENIZER.encode("Fresh prompt for n"))
    assert [s["meta_info"]["cached_tokens"] for s in samples] == [n_len - 1, n_len - 1]
    assert client.post("/flush_cache").status_code == 200
    flushed = generate(client, text=prompt, sampling_params=params)
    assert flushed["meta_info"]["cached_tokens"] == 0


def test_logprobs_follow_the_generator(client: httpx.Client) -> None:
    body = {
        "text": "log probs",
        "return_logprob": True,
        "top_logprobs_num": 3,
        "logprob_start_len": 0,
        "sampling_params": {**GREEDY, "max_new_tokens": 6, "ignore_eos": True},
    }
    meta = generate(client, **body)["meta_info"]
    output = meta["output_token_logprobs"]
    assert len(output) == meta["completion_tokens"] == meta["output_token_logprobs_length"]
    assert all(lp < 0 and text is None for lp, _, text in output)
    # Greedy picks each position's most likely candidate, so it heads the top list.
    for (lp, token, _), top in zip(output, meta["output_top_logprobs"], strict=True):
        assert len(top) == 3 and top[0][:2] == [lp, token]
        assert top[0][0] >= top[1][0] >= top[2][0]
    inputs = meta["input_token_logprobs"]
    assert len(inputs) == meta["prompt_tokens"] and inputs[0][0] is None
    plain = generate(client, text="log probs", sampling_params={"max_new_tokens": 1})
    assert "output_token_logprobs" not in plain["meta_info"]
    chunks = stream_chunks(client, body)
    assert chunks[-1]["meta_info"]["output_token_logprobs"] == output


def test_min_new_tokens_and_rid_expansion(client: httpx.Client) -> None:
    early = None
    for i in range(400):
        result = generate(
            client, text=f"early {i}", sampling_params={**GREEDY, "max_new_tokens": 8}
        )
        if result["meta_info"]["finish_reason"]["type"] == "stop":
            early = (f"early {i}", len(result["output_ids"]))
            break
    assert early is not None
    params = {**GREEDY, "max_new_tokens": 30, "min_new_tokens": early[1] + 4}
    longer = generate(client, text=early[0], sampling_params=params)
    assert len(longer["output_ids"]) >= early[1] + 4
    assert EOS_TOKEN_ID not in longer["output_ids"][: early[1] + 4]
    batch = generate(client, text=["a", "b"], rid="R", sampling_params={"max_new_tokens": 1})
    assert [item["meta_info"]["id"] for item in batch] == ["R_0", "R_1"]
    mismatch = client.post("/generate", json={"text": ["a", "b"], "rid": ["only-one"]})
    assert mismatch.status_code == 400


# -- streaming details ---------------------------------------------------------------------------


def test_stream_interval_sets_the_chunk_cadence(client: httpx.Client) -> None:
    params = {**GREEDY, "max_new_tokens": 10, "ignore_eos": True, "stream_interval": 4}
    chunks = stream_chunks(client, {"text": "cadence", "sampling_params": params})
    assert [c["meta_info"]["completion_tokens"] for c in chunks] == [1, 4, 8, 10]


def test_streams_hold_back_a_partial_stop_string(client: httpx.Client) -> None:
    params = {**GREEDY, "max_new_tokens": 16, "ignore_eos": True}
    full = generate(client, text="hold back", sampling_params=params)["text"]
    words = full.split(" ")
    stop = f" {words[6]} {words[7][:2]}"
    final = generate(client, text="hold back", sampling_params={**params, "stop": stop})
    chunks = stream_chunks(
        client, {"text": "hold back", "sampling_params": {**params, "stop": stop}}
    )
    assert chunks[-1]["text"] == final["text"] == full[: full.index(stop)]
    assert all(final["text"].startswith(c["text"]) for c in chunks)


# -- routing, validation, config -----------------------------------------------------------------


def test_unknown_routes_methods_and_context_limits(client: httpx.Client) -> None:
    missing = client.get("/no/such/route")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = client.get("/generate")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})
    assert client.get("/").json() == "SGLang is running"
    assert client.get("/metrics").status_code == 404  # metrics are off by default
    long_prompt = [300 + i % 1000 for i in range(4096)]
    too_long = client.post("/generate", json={"input_ids": long_prompt})
    assert too_long.json() == {
        "error": {
            "message": "The input (4096 tokens) is longer than the model's context length "
            "(4096 tokens)."
        }
    }
    overflow = client.post(
        "/generate",
        json={"input_ids": long_prompt[:4000], "sampling_params": {"max_new_tokens": 200}},
    )
    assert overflow.json()["error"]["message"].startswith(
        "Requested token count exceeds the model's maximum context length of 4096 tokens."
    )
    duplicate = client.post("/generate", json={"text": ["a", "b"], "rid": ["r", "r"]})
    assert duplicate.json() == {
        "error": {"message": "Duplicate request IDs detected within the request: ['r']"}
    }
    malformed = client.post("/generate", content=b"{nope")
    assert malformed.status_code == 400 and malformed.json()["type"] == "Bad Request"
    nan = client.post("/generate", content=b'{"text": "x", "sampling_params": {"top_p": NaN}}')
    assert nan.status_code == 400 and nan.json()["type"] == "Bad Request"


def test_stats_and_metrics_count_requests() -> None:
    with FakeSGLangServer(enable_metrics=True) as srv, httpx.Client(base_url=srv.url) as c:
        generate(c, text="count me", sampling_params={"max_new_tokens": 3, "ignore_eos": True})
        generate(c, text=["a", "b"], sampling_params={"max_new_tokens": 2, "ignore_eos": True})
        stats = srv.app.stats
        assert stats.generate_requests == 2
        assert stats.completions_generated == 3
        assert stats.generation_tokens == 7
        assert stats.requests["/generate"] == 2
        metrics = c.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        # Real SGLang's labels: split by streaming, with the engine type.
        labels = 'engine_type="unified",is_streaming="{}",model_name="fake/sglang-tiny"'
        text = metrics.text
        assert f"sglang:generation_tokens_total{{{labels.format('false')}}} 7.0" in text
        assert f"sglang:generation_tokens_total{{{labels.format('true')}}} 0.0" in text
        assert f"sglang:num_requests_total{{{labels.format('false')}}} 3.0" in text
        assert 'sglang:http_requests_total{endpoint="/generate",method="POST"} 2.0' in text


def test_config_is_validated() -> None:
    with pytest.raises(TypeError, match="no_such_knob"):
        create_fake_app(no_such_knob=1)
    with pytest.raises(ValueError, match="fail_503_rate"):
        FakeServerConfig(fail_503_rate=1.5)
    app = create_fake_app(FakeServerConfig(model_path="org/model"), seed=3)
    assert (app.config.served_model_name, app.config.seed) == ("org/model", 3)
    renamed = create_fake_app(app.config, model_path="other/model")
    assert renamed.config.served_model_name == "other/model"


# -- tokenizer -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_tokenizer_round_trips_any_text(text: str) -> None:
    ids = TOKENIZER.encode(text)
    assert all(0 <= i < TOKENIZER.vocab_size for i in ids)
    assert TOKENIZER.decode(ids, skip_special_tokens=False) == text
    if "<" not in text:
        assert TOKENIZER.decode(ids) == text


def test_tokenizer_special_tokens_and_words() -> None:
    ids = TOKENIZER.encode("<|im_start|>user\nThe city<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert TOKENIZER.decode(ids) == "user\nThe city"
    assert len(TOKENIZER.encode(" the river")) == 2  # whole words are single tokens


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_serves_until_terminated() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sglang_client.testing", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=20), "the CLI printed nothing"
        line = proc.stdout.readline()
        assert line.startswith("Fake SGLang server listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        deadline = time.monotonic() + 20
        status = 0
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{url}/health", timeout=1).status_code
            except httpx.TransportError:
                status = 0
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200
        response = httpx.post(f"{url}/generate", json={"text": "cli"}, timeout=5)
        assert response.status_code == 200 and "meta_info" in response.json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_command_line_on_a_taken_port_says_so() -> None:
    import socket

    from sglang_client.testing.__main__ import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["--port", str(port)])
    assert str(exited.value.code).startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in str(exited.value.code)
