"""lm.engines: one interface over our generate and a llama.cpp server; bad backends fail before any work."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lm.engines import check_backend, engine_name, replies, server_replies
from lm.generate import GenerationConfig


class FakeServer:
    """A llama-server stand-in: /tokenize with a chosen tokenizer, /completion echoing the request."""

    def __init__(self, tokenize):
        seen = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append((self.path, body))
                if self.path == "/tokenize":
                    out = {"tokens": tokenize(body["content"])}
                else:
                    out = {"content": f" reply to {len(body['prompt'])} ids ", "tokens_predicted": 3,
                           "stop_type": "eos"}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_backend_names_are_checked():
    assert engine_name("hf") == "hf" and engine_name("http://x:1").startswith("llama.cpp")
    with pytest.raises(ValueError, match="Unknown rollout backend 'vllm'"):
        check_backend("vllm")


def test_server_backend_checks_the_tokenizer_then_samples_with_our_settings(tiny):
    ok = FakeServer(lambda text: tiny.tokenizer.encode(text, add_special_tokens=False))
    try:
        gen = GenerationConfig(max_new_tokens=7, temperature=0.7, top_p=0.9)
        with replies(tiny, ok.url) as sample:
            out = sample([[{"role": "user", "content": "Hi"}]] * 3, gen, 5)
        assert [r.text for r in out] == [out[0].text] * 3 and out[0].finished and out[0].n_gen_tokens == 3
        bodies = [b for p, b in ok.requests if p == "/completion"]
        assert sorted(b["seed"] for b in bodies) == [5, 6, 7]
        assert all(b["n_predict"] == 7 and b["temperature"] == 0.7 and b["top_p"] == 0.9 and b["top_k"] == 0
                   and b["min_p"] == 0.0 and b["repeat_penalty"] == 1.0
                   and b["samplers"] == ["temperature", "top_p"] for b in bodies)
        with pytest.raises(ValueError, match="temperature and top-p only"):
            server_replies(ok.url, [[1, 2]], GenerationConfig(repetition_penalty=1.2), 0)
    finally:
        ok.close()
    other = FakeServer(lambda text: list(range(len(text))))  # another model's tokenizer
    try:
        with pytest.raises(ValueError, match="tokenizes differently"):
            with replies(tiny, other.url):
                pass
        assert [p for p, _ in other.requests] == ["/tokenize"]  # refused before sampling anything
    finally:
        other.close()


def test_unreachable_server_is_a_clear_error(tiny):
    with pytest.raises(ConnectionError, match="Cannot reach the rollout server at http://127.0.0.1:9"):
        with replies(tiny, "http://127.0.0.1:9"):
            pass


def test_rollouts_of_two_engines_never_share_a_cache(tiny, tmp_path):
    from axis.rollouts import RolloutSpec, generate_rollouts

    fake = FakeServer(lambda text: tiny.tokenizer.encode(text, add_special_tokens=False))
    specs = [RolloutSpec("pirate", "x", 0, "You are a pirate.", q) for q in ("Hi?", "Who are you?")]
    gen = GenerationConfig(max_new_tokens=4)
    try:
        got = generate_rollouts(tiny, specs, gen, tmp_path, progress=False, backend=fake.url)
    finally:
        fake.close()
    assert all(r["text"].startswith("reply to") for r in got.values())
    assert json.loads((tmp_path / "manifest.json").read_text())["engine"] == engine_name(fake.url)
    assert json.loads((tmp_path / "seconds.json").read_text())["n"] == 2
    assert generate_rollouts(tiny, specs, gen, tmp_path, progress=False, backend="http://127.0.0.1:9") == got  # cached
    with pytest.raises(ValueError, match="other settings"):
        generate_rollouts(tiny, specs, gen, tmp_path, progress=False, backend="hf")


def test_engine_check_only_samples_a_spread_of_specs_with_both_engines(tiny, tmp_path):
    """`steerlens axis --engine-check-only`: the check the build runs, alone; no axis is written."""
    from steerlens.cli import run_command
    from steerlens.errors import UsageError

    fake = FakeServer(lambda text: tiny.tokenizer.encode(text, add_special_tokens=False))
    try:
        got = run_command("axis", ["--model", "tiny", "--roles-per-category", "1", "--n-questions", "2",
                                   "--max-new-tokens", "4", "--backend", fake.url, "--engine-check", "3",
                                   "--engine-check-only", "--out", str(tmp_path)])
    finally:
        fake.close()
    check = got["check"]
    assert set(check) == {"hf", engine_name(fake.url)}
    assert all(v["n"] == 3 and v["nll_per_token"] > 0 for v in check.values())
    assert check[engine_name(fake.url)]["mean_tokens"] == 3  # the fake server's replies
    assert len([p for p, _ in fake.requests if p == "/completion"]) == 3
    assert json.loads((tmp_path / "engine_check.json").read_text())["check"] == check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine_check.json"]
    with pytest.raises(UsageError, match="give --backend llama.cpp or a URL"):
        run_command("axis", ["--model", "tiny", "--engine-check-only", "--out", str(tmp_path)])
