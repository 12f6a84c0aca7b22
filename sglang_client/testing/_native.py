"""``POST /generate``: normalisation (protocol §1.3), responses (§2) and streaming (§3)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio

from sglang_client.testing._asgi import (
    DONE_EVENT,
    HTTPError,
    Receive,
    Send,
    dumps,
    flat_error,
    parse_json,
    require_object,
    sse_event,
    start_sse,
    validation_error,
)
from sglang_client.testing._contract import contract_error
from sglang_client.testing._engine import Engine, Run, Sub, new_rid
from sglang_client.testing._faults import InjectedDisconnect
from sglang_client.testing._logprobs import LogprobTracker
from sglang_client.testing._params import (
    GENERATE_FIELDS,
    SamplingParams,
    lax_type_errors,
    parse_sampling_params,
)
from sglang_client.testing._sessions import SessionError

__all__ = ["QUEUE_FULL", "FaultDraw", "InternalCrash", "NativeGenerate", "stream_error_event"]

QUEUE_FULL = "The request queue is full."
_LIST_WITH_N = (
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "token_ids_logprob",
    "custom_logit_processor",
)


_OnMoved = Callable[[list[Sub]], Awaitable[bool]]
FaultDraw = Callable[[bool], Awaitable["str | None"]]


async def _keep_going(moved: list[Sub]) -> bool:
    return True


class InternalCrash(Exception):
    """An uncaught server error: answered with Starlette's plain-text 500."""


def stream_error_event(message: str) -> bytes:
    """The event a semantic error becomes once SSE headers were sent (fact 13)."""
    error = {"message": message, "type": "invalid_request_error", "code": 400, "retryable": False}
    return sse_event({"error": error})


class RequestAborted(ValueError):
    """A request SGLang's scheduler aborts with status 400 (like a session it cannot continue):
    a 400 when not streaming, a 200 stream with one abort event otherwise."""


def _pick(data: dict[str, Any], name: str, prompt: int, default: Any) -> Any:
    """A per-prompt field's value for ``prompt`` (a list is indexed, a scalar shared)."""
    value = data.get(name)
    if isinstance(value, list):
        return value[prompt] if prompt < len(value) else default
    return default if value is None else value


class NativeGenerate:
    """The ``/generate`` route over an ``Engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self.tokenizer = engine.tokenizer

    # -- entry -------------------------------------------------------------------------------

    async def handle(self, receive: Receive, send: Send, body: bytes, draw: FaultDraw) -> None:
        """Serve one ``/generate`` request; ``draw(stream)`` picks the injected fault, if any."""
        data = require_object(parse_json(body), "GenerateReqInput")
        errors = lax_type_errors(data, GENERATE_FIELDS)
        if errors:
            raise validation_error(errors)
        message = contract_error(data)
        if message is not None:
            raise HTTPError(400, {"error": message})
        stream = bool(data.get("stream"))
        fault = await draw(stream)
        if fault == "503":
            await self._queue_full(send, data, stream)
            return
        try:
            run, is_array = self._plan(data)
            run.stream = stream
        except (SessionError, RequestAborted) as exc:
            await self._session_abort(send, data, stream, str(exc))
            return
        except ValueError as exc:
            if not stream:
                raise HTTPError(400, {"error": {"message": str(exc)}}) from None
            await start_sse(send)
            body_out = stream_error_event(str(exc)) + DONE_EVENT
            await send({"type": "http.response.body", "body": body_out})
            return
        want_ids = bool(data.get("return_prompt_token_ids"))
        try:
            if stream:

                def chunk(sub: Sub) -> list[bytes]:
                    return [self._chunk(sub, run, want_ids, is_array)]

                await self.stream_events(receive, send, run, chunk, fault)
                await send({"type": "http.response.body", "body": DONE_EVENT})
                return
            await self.complete(receive, run)
            objects = []
            for sub in run.subs:
                gen = sub.gen
                obj = self._object(sub, run, gen.text, gen.output_ids, final=True, first=True)
                if want_ids:
                    obj["prompt_token_ids"] = sub.prompt_ids
                objects.append(obj)
            await self.send_final(send, objects if is_array else objects[0], fault)
        finally:
            self.engine.finish(run)

    # -- normalisation -----------------------------------------------------------------------

    def _plan(self, data: dict[str, Any]) -> tuple[Run, bool]:
        get = data.get
        if get("session_id") is not None and get("session_params") is not None:
            raise ValueError("session_id and session_params cannot both be set.")
        text: Any = get("text")
        input_ids: Any = get("input_ids")
        if text is None and input_ids is None:
            if get("input_embeds") is not None:
                raise ValueError(
                    "input_embeds is only supported with --disable-radix-cache, which this "
                    "server does not use."
                )
            raise ValueError("Either text, input_ids or input_embeds should be provided.")
        if text is not None:
            is_batch = isinstance(text, list)
            texts: list[str] = text if is_batch else [text]
            prompts = [self.tokenizer.encode(t) for t in texts]
            if input_ids is not None:  # batch shape from text, token ids from input_ids
                ids = input_ids if input_ids and isinstance(input_ids[0], list) else [input_ids]
                prompts = [list(i) for i in ids[: len(prompts)]]
        else:
            is_batch = bool(input_ids) and isinstance(input_ids[0], list)
            prompts = [list(i) for i in input_ids] if is_batch else [list(input_ids)]
        if not prompts:
            raise ValueError("The batch is empty: give at least one prompt.")
        sessions = self._session_params(get("session_params"), len(prompts))
        vocab = self.tokenizer.vocab_size
        for i, prompt in enumerate(prompts):
            if not prompt and sessions[i] is None:
                raise ValueError("input_ids cannot be empty.")
            bad = self.tokenizer.first_invalid(prompt)
            if bad is not None:
                raise ValueError(
                    f"The input_ids contain token id {bad}, outside the vocabulary [0, {vocab})."
                )
        params = self._sampling(get("sampling_params"), len(prompts))
        n = params[0].n
        if n > 1:
            for name in _LIST_WITH_N:
                if isinstance(get(name), list) and (name != "token_ids_logprob" or is_batch):
                    raise ValueError(f"Cannot use list {name} with parallel_sample_num > 1")
        rids = self._rids(get("rid"), len(prompts), is_batch)
        session_list = sessions if any(s is not None for s in sessions) else None

        def check(p: int, context: list[int]) -> None:
            self._check_logprob_start(data, p, context)

        run = self.engine.make_run(prompts, params, rids, session_list, check)
        self._attach_logprobs(data, run, n)
        return run, is_batch or n > 1

    @staticmethod
    def _check_logprob_start(data: dict[str, Any], p: int, context: list[int]) -> None:
        """SGLang's scheduler refuses input logprobs that would start past the input, a
        session's history included (with ``return_logprob``; without, the start is ignored)."""
        start = _pick(data, "logprob_start_len", p, -1)
        if _pick(data, "return_logprob", p, False) and start > len(context):
            raise RequestAborted(
                f"req.logprob_start_len={start} is higher than the number of input tokens"
                f" len(req.origin_input_ids)={len(context)}."
                " Please use a smaller logprob_start_len."
            )

    def _attach_logprobs(self, data: dict[str, Any], run: Run, n: int) -> None:
        wanted = data.get("return_logprob")
        if not wanted:
            return

        def pick(name: str, prompt: int, default: Any) -> Any:
            return _pick(data, name, prompt, default)

        with_text = bool(data.get("return_text_in_logprobs"))
        for sub in run.subs:
            prompt = sub.index // n
            if pick("return_logprob", prompt, False):
                sub.logprobs = LogprobTracker(
                    self.tokenizer,
                    sub.prompt_ids,
                    pick("logprob_start_len", prompt, -1),
                    pick("top_logprobs_num", prompt, 0),
                    with_text,
                )

    @staticmethod
    def _session_params(value: Any, count: int) -> list[dict[str, Any] | None]:
        if value is None:
            return [None] * count
        if isinstance(value, list):
            if len(value) != count:
                raise ValueError("The session_params list length must match the batch size.")
            return list(value)
        return [value] * count

    def _sampling(self, value: Any, count: int) -> list[SamplingParams]:
        raws: list[dict[str, Any]] = value if isinstance(value, list) else [value or {}] * count
        if len(raws) != count:
            raise ValueError(
                f"The sampling_params list has {len(raws)} entries but the batch has {count} "
                "prompts."
            )
        if any("choice" in raw for raw in raws):
            # In the contract but not a field of SGLang's SamplingParams: a TypeError (500).
            raise InternalCrash("SamplingParams.__init__() got an unexpected keyword 'choice'")
        vocab = self.tokenizer.vocab_size
        params = [parse_sampling_params(raw, vocab) for raw in raws]
        if len({p.n for p in params}) > 1:
            raise ValueError(
                "The parallel_sample_num should be the same for all samples in sample params."
            )
        return params

    @staticmethod
    def _rids(value: Any, count: int, is_batch: bool) -> list[str] | None:
        if value is None:
            return None
        if not is_batch:
            if isinstance(value, list):
                if len(value) != 1:
                    raise ValueError("The rid should be a string for a single request.")
                return list(value)
            return [value]
        if isinstance(value, str):
            return [f"{value}_{i}" for i in range(count)]
        if len(value) != count:
            raise ValueError(
                "The specified rids length mismatch with the batch_size for batch processing."
            )
        counts: dict[str, int] = {}
        for r in value:
            counts[r] = counts.get(r, 0) + 1
        duplicates = sorted(r for r, c in counts.items() if c > 1)
        if duplicates:
            raise ValueError(f"Duplicate request IDs detected within the request: {duplicates}")
        return list(value)

    # -- output ------------------------------------------------------------------------------

    def _meta(
        self, sub: Sub, run: Run, *, final: bool, first: bool, lp_start: int = 0
    ) -> dict[str, Any]:
        gen = sub.gen
        completion = len(gen.output_ids)
        # SGLang's keys in its order; the timing telemetry only with --enable-metrics (§2).
        timed = self.config.enable_metrics
        received = run.received
        prefilled = run.first_token or time.time()
        meta: dict[str, Any] = {
            "id": sub.rid,
            "finish_reason": gen.finish_reason if final else None,
            "prompt_tokens": len(sub.prompt_ids),
            "weight_version": self.config.weight_version,
            "num_retractions": 0,
        }
        if timed:
            meta.update(
                storage_prefetch_wait=0.0,
                storage_staging_wait=0.0,
                forward_entry_time=received,
                prefill_finished_time=prefilled,
                queue_time=0.0,
            )
        meta["reasoning_tokens"] = 0
        meta["completion_tokens"] = completion
        meta["cached_tokens"] = sub.cached_tokens
        if final:
            meta["weight_versions"] = [
                {"version": self.config.weight_version, "start": 0, "end": completion}
            ]
        cached = sub.cached_tokens
        meta["cached_tokens_details"] = {"device": cached, "host": 0} if cached else None
        meta["dp_rank"] = None
        if sub.logprobs is not None:
            sub.logprobs.extend(gen.output_ids)
            meta.update(sub.logprobs.meta(lp_start))
        now = time.time()
        if final:
            meta["e2e_latency"] = run.elapsed()
            if timed:
                meta["request_received_ts"] = received
                meta["first_token_latency"] = prefilled - received
                meta["api_server_dispatch_finish_ts"] = received
        if first or final:
            if sub.first_sent is None:
                sub.first_sent = now
            meta["response_sent_to_client_ts"] = sub.first_sent
        if final and timed:
            meta["request_finished_ts"] = now
            if completion > 1:  # only once there were decode steps
                meta["decode_throughput"] = (completion - 1) / max(now - prefilled, 1e-6)
        return meta

    def _object(
        self,
        sub: Sub,
        run: Run,
        text: str,
        ids: list[int],
        *,
        final: bool,
        first: bool,
        lp_start: int = 0,
    ) -> dict[str, Any]:
        meta = self._meta(sub, run, final=final, first=first, lp_start=lp_start)
        return {"text": text, "output_ids": ids, "meta_info": meta}

    async def _drive(self, receive: Receive, run: Run, on_moved: _OnMoved) -> None:
        """Run to the end, calling ``on_moved`` per tick until it returns False.

        With latency configured, a watcher aborts the run when the client disconnects (SGLang
        aborts the rids of a request whose client went away).
        """
        engine = self.engine
        if not engine.paced:
            while moved := engine.advance(run):
                if not await on_moved(moved):
                    return
            return
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_disconnect, receive, run)
            async with engine.slot(run), aclosing(engine.ticks(run)) as ticks:
                async for moved in ticks:
                    if not await on_moved(moved):
                        break
            group.cancel_scope.cancel()

    async def _watch_disconnect(self, receive: Receive, run: Run) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.engine.abort([sub.rid for sub in run.subs])

    async def complete(self, receive: Receive, run: Run) -> None:
        """Run every sub-request to its end (no streaming)."""
        if self.engine.paced:
            await self._drive(receive, run, _keep_going)
        else:
            self.engine.run_to_end(run)
        self.engine.finish(run)

    async def send_final(self, send: Send, obj: object, fault: str | None) -> None:
        """Send a 200 JSON response, or half of it and cut the connection (``drop_stream``)."""
        body = dumps(obj)
        length = str(len(body)).encode()
        headers = [(b"content-length", length), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if fault == "drop_stream":
            half = body[: len(body) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
            raise InjectedDisconnect("fault: connection dropped mid-response")
        await send({"type": "http.response.body", "body": body})

    async def stream_events(
        self,
        receive: Receive,
        send: Send,
        run: Run,
        events: Callable[[Sub], list[bytes]],
        fault: str | None,
    ) -> None:
        """Start an SSE response and send ``events(sub)`` at each sub-request's chunk cadence.

        A chunk is due for a sub-request's first token, every ``stream_interval`` tokens, and
        when it finishes. The caller sends the terminator. With ``fault == "drop_stream"`` the
        connection is cut after the first chunk.
        """
        await start_sse(send)
        default_interval = self.config.stream_interval
        dropping = fault == "drop_stream"
        sent = 0

        async def on_moved(moved: list[Sub]) -> bool:
            nonlocal sent
            out: list[bytes] = []
            for sub in moved:
                count = len(sub.gen.output_ids)
                interval = sub.gen.params.stream_interval or default_interval
                if sub.done or count <= 1 or count % interval == 0:
                    out.extend(events(sub))
            if out:
                if dropping and sent:
                    return False
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                sent += 1
            return True

        await self._drive(receive, run, on_moved)
        if dropping:
            # Cut after at least one chunk, never sending the terminator.
            self.engine.abort_unfinished(run)
            raise InjectedDisconnect("fault: stream dropped")
        self.engine.finish(run)

    def _chunk(self, sub: Sub, run: Run, want_ids: bool, indexed: bool) -> bytes:
        gen = sub.gen
        text = gen.visible_text()
        ids = gen.output_ids
        lp_start = 0
        if self.config.incremental_streaming_output:
            out_text, out_ids = text[sub.sent_chars :], ids[sub.sent_ids :]
            lp_start = sub.sent_ids
        else:
            out_text, out_ids = text, ids
        sub.sent_chars, sub.sent_ids = len(text), len(ids)
        first = sub.chunks == 0
        obj = self._object(
            sub, run, out_text, out_ids, final=sub.done, first=first, lp_start=lp_start
        )
        sub.chunks += 1
        if want_ids:
            obj["prompt_token_ids"] = sub.prompt_ids
        if indexed:
            obj["index"] = sub.index
        return sse_event(obj)

    # -- aborts with a status ----------------------------------------------------------------

    def _abort_object(self, data: dict[str, Any], finish: dict[str, Any]) -> dict[str, Any]:
        rid = data.get("rid")
        text, ids = data.get("text"), data.get("input_ids")
        prompt = 0
        if isinstance(text, str):
            prompt = len(self.tokenizer.encode(text))
        elif isinstance(ids, list) and ids and not isinstance(ids[0], list):
            prompt = len(ids)
        meta = {
            "id": rid if isinstance(rid, str) else new_rid(),
            "finish_reason": finish,
            "prompt_tokens": prompt,
            "weight_version": self.config.weight_version,
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "e2e_latency": 0.0,
            "response_sent_to_client_ts": time.time(),
        }
        return {"text": "", "output_ids": [], "meta_info": meta}

    async def _queue_full(self, send: Send, data: dict[str, Any], stream: bool) -> None:
        if not stream:
            raise HTTPError(503, flat_error(QUEUE_FULL, "503", 503))
        # The scheduler's own dict for a full queue (scheduler.py): no err_type key.
        finish = {"type": "abort", "status_code": 503, "message": QUEUE_FULL}
        await start_sse(send)
        event = sse_event(self._abort_object(data, finish))
        await send({"type": "http.response.body", "body": event + DONE_EVENT})

    async def _session_abort(
        self, send: Send, data: dict[str, Any], stream: bool, message: str
    ) -> None:
        if not stream:
            raise HTTPError(400, {"error": {"message": message}})
        finish = {
            "type": "abort",
            "message": message,
            "status_code": 400,
            "err_type": "BadRequestError",
        }
        await start_sse(send)
        event = sse_event(self._abort_object(data, finish))
        await send({"type": "http.response.body", "body": event + DONE_EVENT})
