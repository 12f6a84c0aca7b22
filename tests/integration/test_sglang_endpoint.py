"""SGLang's own ``/generate`` endpoint checks, restated for any base URL.

What SGLang's ``test/srt/test_srt_endpoint.py`` asks of ``/generate``, in our words: plain,
batch and parallel-sample decodes (whole and streamed) with logprobs; ``logprob_start_len``
accounting; logprobs of a long prompt; output logprobs that a prefill of the same ids scores
alike; ``logit_bias`` forcing, forbidding and staying per request; ``cached_tokens`` of
overlapping id prefixes; ``/get_server_info`` (also concurrently). Each runs on the server
under test and through the proxy, except the cache-token count (a proxy HIT replays the first
answer's count).

Scaled to the CPU model (2,048-token context, 2,048-token vocabulary): SGLang's test sends an
8,000-sentence prompt and ids up to 11,000. Left out: grammar-constrained logprobs (``regex``:
a grammar backend) and custom logit processors (``--enable-custom-logit-processor``: code
shipped to the server), which neither the fake nor the proxy tests can run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

PROMPT = "The capital of France is"


@pytest.fixture(params=["server", "proxy"])
def http(request: pytest.FixtureRequest, sglang_url: str, proxy_url: str) -> Iterator[httpx.Client]:
    url = sglang_url if request.param == "server" else proxy_url
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


def _post(http: httpx.Client, body: dict[str, Any]) -> Any:
    response = http.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _events(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", "/generate", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def _decode_body(n: int = 1, batch: bool = False, logprobs: bool = False) -> dict[str, Any]:
    return {
        "text": [PROMPT] if batch else PROMPT,
        "sampling_params": {"temperature": 0 if n == 1 else 0.5, "max_new_tokens": 16, "n": n},
        "return_logprob": logprobs,
        "top_logprobs_num": 5 if logprobs else 0,
        "return_text_in_logprobs": logprobs,
        "logprob_start_len": 0,
    }


@pytest.mark.gateway_differs("takes one text per /generate (a list of texts is a 422)")
def test_decodes_single_batch_parallel_and_with_logprobs(http: httpx.Client) -> None:
    single = _post(http, _decode_body())
    assert isinstance(single["text"], str) and single["meta_info"]["completion_tokens"] > 0
    batch = _post(http, _decode_body(batch=True))
    assert isinstance(batch, list) and len(batch) == 1
    samples = _post(http, _decode_body(n=3))
    assert isinstance(samples, list) and len(samples) == 3
    streamed = _events(http, _decode_body(n=3))
    assert {e["index"] for e in streamed} == {0, 1, 2}
    assert sum(1 for e in streamed if e["meta_info"]["finish_reason"]) == 3
    scored = _post(http, _decode_body(logprobs=True))
    meta = scored["meta_info"]
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    assert all(len(top) == 5 for top in meta["output_top_logprobs"])
    assert all(isinstance(entry[2], str) for entry in meta["input_token_logprobs"])


@pytest.mark.gateway_differs("takes one text per /generate (a list of texts is a 422)")
def test_logprob_start_len_counts_the_skipped_prompt_tokens(http: httpx.Client) -> None:
    start, new = 4, 4
    prompts = ["I have a very good idea on", "Today is a sunndy day and"]
    answers = _post(
        http,
        {
            "text": prompts,
            # ignore_eos: SGLang's test counts on 4 tokens; an early EOS would end it sooner.
            "sampling_params": {"temperature": 0, "max_new_tokens": new, "ignore_eos": True},
            "return_logprob": True,
            "top_logprobs_num": 5,
            "return_text_in_logprobs": True,
            "logprob_start_len": start,
        },
    )
    for prompt, answer in zip(prompts, answers, strict=True):
        meta = answer["meta_info"]
        assert meta["prompt_tokens"] == start + len(meta["input_token_logprobs"])
        assert prompt.endswith("".join(entry[2] for entry in meta["input_token_logprobs"]))
        assert meta["completion_tokens"] == len(meta["output_token_logprobs"]) == new
        assert answer["text"] == "".join(entry[2] for entry in meta["output_token_logprobs"])


def test_long_prompt_logprobs_have_the_greedy_token_on_top(http: httpx.Client) -> None:
    new = 4
    meta = _post(
        http,
        {
            "text": "I have a very good idea on this. " * 100,  # 1,400 tokens on the CPU model
            "sampling_params": {"temperature": 0, "max_new_tokens": new, "ignore_eos": True},
            "return_logprob": True,
            "logprob_start_len": -1,
            "top_logprobs_num": 5,
        },
    )["meta_info"]
    assert meta["completion_tokens"] == new
    assert len(meta["output_token_logprobs"]) == len(meta["output_top_logprobs"]) == new
    for chosen, tops in zip(
        meta["output_token_logprobs"], meta["output_top_logprobs"], strict=True
    ):
        assert tops[0][:2] == chosen[:2]  # the greedy pick is the most likely token
        assert len(tops) == 5


def test_output_logprobs_match_a_prefill_of_the_same_ids(http: httpx.Client) -> None:
    def run(prompt: object, max_new_tokens: int) -> dict[str, Any]:
        field = "text" if isinstance(prompt, str) else "input_ids"
        body = {
            field: prompt,
            "sampling_params": {
                "temperature": 1.0,
                "max_new_tokens": max_new_tokens,
                "ignore_eos": True,
            },
            "return_logprob": True,
            "return_text_in_logprobs": True,
            "logprob_start_len": 0,
        }
        meta: dict[str, Any] = _post(http, body)["meta_info"]
        return meta

    first = run("I have a very good idea on how to", 64)
    prompt_ids = [entry[1] for entry in first["input_token_logprobs"]]
    output_ids = [entry[1] for entry in first["output_token_logprobs"]]
    scored = run(prompt_ids + output_ids, 0)
    again = [entry[0] for entry in scored["input_token_logprobs"][first["prompt_tokens"] :]]
    sampled = [entry[0] for entry in first["output_token_logprobs"]]
    assert len(again) == len(sampled)
    assert max(abs(a - b) for a, b in zip(again, sampled, strict=True)) < 0.35


def _sampled_ids(http: httpx.Client, sampling: dict[str, Any], text: str = PROMPT) -> list[int]:
    body = {"text": text, "sampling_params": sampling, "return_logprob": True}
    return [entry[1] for entry in _post(http, body)["meta_info"]["output_token_logprobs"]]


@pytest.mark.gateway_differs(
    "re-serializes requests into its own types, dropping fields it does not know (logit_bias)"
)
def test_logit_bias_forces_forbids_and_stays_per_request(http: httpx.Client) -> None:
    plain = _sampled_ids(http, {"temperature": 1.0, "max_new_tokens": 8, "ignore_eos": True})
    target = plain[0]
    forced = _sampled_ids(
        http, {"temperature": 1.0, "max_new_tokens": 4, "logit_bias": {str(target): 100.0}}
    )
    assert forced == [target] * 4
    unbiased = _sampled_ids(http, {"temperature": 1.0, "max_new_tokens": 4, "ignore_eos": True})
    assert any(token != target for token in unbiased)  # the bias stayed with its request
    banned = {str(token): -100.0 for token in set(plain)}
    sampling = {"temperature": 1.0, "max_new_tokens": 50, "logit_bias": banned}
    assert not set(_sampled_ids(http, sampling)) & set(plain)


def test_cached_tokens_of_overlapping_id_prefixes(sglang_url: str) -> None:
    ids = [4 + (k * 7) % 1900 for k in range(1100)]  # one sequence; each request a prefix
    with httpx.Client(base_url=sglang_url, timeout=120) as http:
        assert http.post("/flush_cache").status_code == 200

        def cached(length: int) -> int:
            body = {"input_ids": ids[:length], "sampling_params": {"max_new_tokens": 1}}
            count: int = _post(http, body)["meta_info"]["cached_tokens"]
            return count

        assert cached(50) == 0
        assert cached(1000) == 50
        assert cached(1000) == 999  # all but the last, whose logits are needed
        assert cached(500) == 499
        assert cached(1100) == 1000


@pytest.mark.gateway_differs("/get_server_info is the gateway's own")
def test_server_info_reports_its_size_and_version_even_concurrently(http: httpx.Client) -> None:
    info = http.get("/get_server_info").json()
    assert isinstance(info["max_total_num_tokens"], int)
    assert isinstance(info["version"], str)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: http.get("/get_server_info").status_code, range(4)))
    assert statuses == [200] * 4
