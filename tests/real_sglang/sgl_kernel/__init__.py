"""A stand-in for the CPU build of ``sgl-kernel``, so that real SGLang runs on this CPU in tests.

Why it exists: SGLang's CPU engine imports its ops from the CPU build of ``sgl-kernel``, and no
such build is on PyPI (the ``sgl-kernel``/``sglang-kernel`` wheels are CUDA-only, with no sdist).
On a CPU without AMX, with ``--attention-backend torch_native``, SGLang calls exactly one of those
ops: ``assign_req_to_token_pool_cpu``. This package implements that one op with plain torch. It
imports several others at module level without calling them: those import as stand-ins that
raise an error naming the op if they are ever called, so nothing can silently run a wrong kernel.
Everything else under test (HTTP server, tokenizer manager, scheduler, detokenizer, radix cache)
is SGLang's own.

It is put on ``PYTHONPATH`` only for the SGLang processes that ``tests/real_sglang/run.py``
starts; the project never imports it.
"""

from __future__ import annotations

from typing import Any

import torch

__version__ = "0.0.0+sglang-client-test-stand-in"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write each request's new KV-cache slots into its row of the request-to-token map.

    For request ``i``, row ``req_pool_indices[i]`` of ``req_to_token`` gets, in columns
    ``start_offset[i]:end_offset[i]``, the next ``end_offset[i] - start_offset[i]`` entries of
    ``out_cache_loc`` (consumed in order across requests), cast to ``req_to_token``'s dtype.
    """
    del pool_len  # the row length; the slices below are bounded by the offsets already
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    taken = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        count = end - start
        if count <= 0:
            continue
        values = out_cache_loc[taken : taken + count].to(req_to_token.dtype)
        req_to_token[row, start:end] = values
        taken += count


class _Unprovided:
    """Any other op: importable (SGLang imports several at module level), never callable."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"sgl_kernel.{self.__name__} was called, but the test stand-in"
            " (tests/real_sglang/sgl_kernel) provides only assign_req_to_token_pool_cpu"
        )

    def __repr__(self) -> str:
        return f"<sgl_kernel stand-in: {self.__name__} (not provided)>"


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unprovided(name)
