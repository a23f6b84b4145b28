"""One interface for sampling unsteered replies: our `generate`, or an external engine's server.

Long unsteered sampling jobs (the axis rollouts, the default corpus) need no hooks, so a faster
engine can write them: llama.cpp's `llama-server` on the same GGUF on CPU (~190 tok/s on 2 cores
against ~70-120 for batched HF sampling). `replies(model, backend)` is a context manager yielding
`sample(convs, gen, seed) -> list[Reply]` for a backend named by one string:

- `"hf"`: `lm.generate.generate` (the same sampler the steered runs use);
- `"llama.cpp"`: start a `llama-server` on the embedded GGUF for the duration (`make llama-cpp`);
- `"http://host:port"`: a running llama.cpp server.

Prompts travel as token ids rendered by our chat template, so both engines see the same prompt;
before use, a server must tokenize a probe text to exactly our ids (a server on another model
fails here, not after an hour of rollouts). Sampling is plain temperature + top-p with top-k, min-p
and the repeat penalty off, in HF's order: temperature first, then top-p. (llama.cpp's default chain
runs top-p before temperature, a wider nucleus: replies 0.21 nats/token less likely under the model
on 64 axis rollout specs, `axis.rollouts.engine_check`.)
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lm.chat import render
from lm.generate import GenerationConfig, generate

BACKENDS = ("hf", "llama.cpp", "http://HOST:PORT")
# Slots and per-slot context of a server this module starts: rollouts are ~100-250 tokens each.
SERVER_SLOTS, SLOT_CONTEXT = 16, 512
# Threads sleep instead of spinning between steps: with other work on the cores (a harvest, tests)
# llama.cpp's default polling made it ~5x slower on 2 cores.
SERVER_ARGS = ["--poll", "0"]
PROBE = "The Assistant said: «Hello, world!» 3.14 — naïve café\n\tdon't 東京 🙂"


@dataclass(frozen=True)
class Reply:
    text: str
    finished: bool  # stopped at end of turn rather than at max_new_tokens
    n_gen_tokens: int


def engine_name(backend: str) -> str:
    """What a cache manifest records: the sampler that wrote the replies."""
    check_backend(backend)
    return "hf" if backend == "hf" else "llama.cpp (temperature, then top-p)"  # before: llama.cpp's order


def check_backend(backend: str) -> None:
    if backend not in ("hf", "llama.cpp") and not backend.startswith(("http://", "https://")):
        raise ValueError(f"Unknown rollout backend {backend!r}; use one of {BACKENDS}.")


@contextlib.contextmanager
def replies(model, backend: str = "hf", gguf=None):
    """Yield `sample(convs, gen, seed)`; a "llama.cpp" backend runs its own server meanwhile."""
    check_backend(backend)
    if backend == "hf":
        yield lambda convs, gen, seed: [Reply(g.text, g.finished, len(g.ids))
                                        for g in generate(model, convs, gen, progress=False, seed=seed)]
        return
    with contextlib.ExitStack() as stack:
        url = backend
        if backend == "llama.cpp":
            from lm.llama_server import llama_server
            from lm.sources import embedded_gguf

            url = stack.enter_context(llama_server(gguf or embedded_gguf(), SERVER_ARGS, parallel=SERVER_SLOTS,
                                                   ctx_size=SERVER_SLOTS * SLOT_CONTEXT))
        check_tokenizer(url, model.tokenizer)
        yield lambda convs, gen, seed: server_replies(url, [render(model.tokenizer, c, True).ids.tolist()
                                                            for c in convs], gen, seed)


def _post(url: str, path: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url.rstrip("/") + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"Cannot reach the rollout server at {url} ({e}); start one (`llama-server -m "
                              "MODEL.gguf`) or pass backend 'llama.cpp' to start it here.") from e


def check_tokenizer(url: str, tokenizer) -> None:
    """The server must tokenize PROBE to our ids: its replies are re-tokenized with ours for harvesting."""
    theirs = _post(url, "/tokenize", {"content": PROBE, "add_special": False}, timeout=30).get("tokens")
    ours = tokenizer.encode(PROBE, add_special_tokens=False)
    if theirs != ours:
        raise ValueError(f"The server at {url} tokenizes differently from the model ({theirs[:8]}... vs "
                         f"{ours[:8]}...): it serves another model; point it at this model's GGUF.")


def server_replies(url: str, prompts: list[list[int]], gen: GenerationConfig, seed: int,
                   workers: int = 64, options: dict | None = None) -> list[Reply]:
    """Sample from a running `llama-server` with many requests in flight (continuous batching).

    `cache_prompt` lets a request reuse a slot's KV cache of a shared prefix (the system prompt);
    `options` adds or overrides request fields."""
    if gen.repetition_penalty != 1.0 or gen.min_new_tokens:
        raise ValueError("A server backend samples with temperature and top-p only; use backend 'hf' for "
                         "repetition_penalty or min_new_tokens.")

    def one(i: int) -> Reply:
        body = {"prompt": prompts[i], "n_predict": gen.max_new_tokens, "temperature": gen.temperature,
                "top_p": gen.top_p, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": seed + i,
                "samplers": ["temperature", "top_p"],
                "stop": ["<|im_end|>"], "cache_prompt": True, **(options or {})}
        r = _post(url, "/completion", body)
        limit = r.get("stop_type") == "limit" if "stop_type" in r else bool(r.get("stopped_limit"))
        return Reply(r["content"].strip(), not limit, int(r.get("tokens_predicted", 0)))

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(len(prompts))))
