"""Where a conditional cap's switch engages on unsteered chats, for two choices of which tokens it counts.

Why: the conditional cap (`steering.Cap(window=W, trigger=T)`) measures the mean projection over the
last W text tokens, system and user turns included. SmolLM2's default system prompt sits high on
the axis ("a helpful AI assistant": about +43 at layer 15), so it keeps ordinary default-prompt answers
from engaging the switch, and keeps a default-prompt answer that drifts ("a majestic dragon") from
engaging it too. Counting only the assistant's own turns (`scope="assistant"`) is the other choice.

`engagement` runs the cap's own rule (`steering.caps.cap_shortfall`: the window mean, then hysteresis
from the trigger back to tau) on the unsteered projections of ordinary answers, persona answers and
default-prompt identity answers, and reports per scope and trigger the share of answer tokens (and
of chats) on which the cap would push. For a one-layer cap with scope "all", the ordinary-answer
figure is the firing `axis.capping.cap_activity` measures on the same answers: teacher-forced, the
cap's own pushes do not reach the layer it measures at.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from jaxtyping import Bool, Int

from lm.batch import pad
from lm.chat import Conversation, render, render_text
from lm.harvest import capturing, forward_batch
from steering.caps import cap_shortfall

from axis.artifact import AssistantAxis
from axis.capping import CapConfig, cap_interventions, default_band

SCOPES = ("all", "assistant")


def turn_header(tokenizer) -> list[int]:
    """Token ids the chat template puts before an assistant reply (e.g. '<|im_start|>assistant\\n')."""
    conv = [{"role": "user", "content": "Hi."}]
    head, full = render_text(tokenizer, conv), render_text(tokenizer, conv, add_generation_prompt=True)
    if not full.startswith(head) or full == head:
        raise ValueError("This chat template adds no assistant header; assistant turns cannot be found.")
    return tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]


def assistant_tokens(ids: Int[torch.Tensor, "b s"], header: list[int]) -> Bool[torch.Tensor, "b s"]:
    """Tokens of assistant turns, their header included: a turn runs from a turn-start token (header[0])
    to the next; it is the assistant's when it begins with `header`. Tokens before any turn count."""
    s, n = ids.shape[1], len(header)
    start = ids == header[0]
    padded = torch.nn.functional.pad(ids, (0, n - 1), value=-1)
    own = start & (padded.unfold(1, n, 1) == torch.tensor(header, device=ids.device)).all(-1)
    idx = torch.where(start, torch.arange(s, device=ids.device), -1).cummax(1).values
    return torch.where(idx >= 0, own.gather(1, idx.clamp(min=0)), True)


def activations(model, layers: list[int], convs: list[Conversation], batch_size: int = 8):
    """Per chat ({hook: residual [1, s, d]}, response mask [s], assistant-turn mask [s]), unsteered."""
    tok, header, out = model.tokenizer, turn_header(model.tokenizer), []
    names = [f"blocks.{l}.hook_resid_post" for l in layers]
    with capturing(model, names) as run:
        for b in range(0, len(convs), batch_size):
            rs = [render(tok, c) for c in convs[b:b + batch_size]]
            ids, _, mask = pad([r.ids for r in rs], tok.pad_token_id, masks=[r.response_mask for r in rs])
            acts = forward_batch(model, ids, names, run=run)
            own = assistant_tokens(ids, header)
            out += [({n: acts[n][i:i + 1, :len(r.ids)] for n in names}, mask[i, :len(r.ids)], own[i, :len(r.ids)])
                    for i, r in enumerate(rs)]
    return out


def engagement(model, axis: AssistantAxis, cfg: CapConfig, triggers: list[float],
               sets: dict[str, list[Conversation]]) -> dict:
    """Per scope and trigger percentile, per set of chats: the share of response tokens on which the
    caps of `cfg` with that trigger (any band layer) would push, by their own rule
    (`steering.caps.cap_shortfall`), and the share of chats they push in at all."""
    layers = axis.check_layers(cfg.layers or default_band(axis.n_layers))
    data = {k: activations(model, layers, v) for k, v in sets.items()}
    rows = []
    for scope in SCOPES:
        for t in triggers:
            kernels = [c.kernel(model) for c in cap_interventions(axis, replace(cfg, layers=layers, trigger=t))]
            row = {"scope": scope, "trigger": t, "trigger_value": [k.params[0][2].item() for k in kernels]}
            for name, chats in data.items():
                tokens = total = hit = 0
                for acts, resp, own in chats:
                    counted = torch.arange(len(resp)) > 0  # the attention sink never counts
                    counted &= own if scope == "assistant" else True
                    any_layer = torch.stack([cap_shortfall(acts[k.hook], k.params, k.init_state(1, "cpu"),
                                                           counted[None], *k.static)[0][0] > 0
                                             for k in kernels]).any(0) & resp
                    tokens, total, hit = tokens + int(any_layer.sum()), total + int(resp.sum()), hit + bool(any_layer.any())
                row[name] = {"tokens": tokens / max(total, 1), "chats": hit / max(len(chats), 1), "n": len(chats)}
            rows.append(row)
    tau = [axis.tau(l, cfg.percentile, cfg.calibration) for l in layers]
    return {"layers": layers, "window": cfg.window, "percentile": cfg.percentile, "calibration": cfg.calibration,
            "tau": tau, "rows": rows}
