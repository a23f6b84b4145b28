"""Field inputs and outputs: SAELens registry SAEs (offline), HF causal-LM directories of several
architectures through `load_model`, and the SAEBench core metrics written by eval."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import saes.access as access
from lm.generate import generate
from lm.harvest import forward_batch
from lm.model import load_model
from saes import EvalConfig, evaluate_dir, evaluate_sae, load_sae, save_sae
from saes.access import load_registry_sae, registry_id, sae_path
from saes.saebench import core_metrics, write_core_metrics
from tests.helpers import HOOK, random_topk_sae_dir

RELEASE, SAE_ID = "gpt2-small-res-jb", "blocks.0.hook_resid_pre"  # a registry entry in SAELens's own format
REPO = "jbloom/GPT2-Small-SAEs-Reformatted"


@pytest.fixture(scope="module", autouse=True)
def no_hub():
    """Every test here runs with the hub switched off: nothing may touch the network."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: set the live value too
        yield


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty HF cache in a temp HF_HOME (the hub is off for the whole module: `no_hub`)."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(access, "_CACHE", {})  # no registry SAE from an earlier test
    return hub


def test_unknown_release_and_sae_id_are_refused_with_how_to_find_them(offline_hub):
    with pytest.raises(ValueError, match=r"Unknown SAELens release 'gpt2-small-res-jbb'\. Did you mean "
                                         r"\['gpt2-small-res-jb'.*get_pretrained_saes_directory\(\)"):
        load_registry_sae("gpt2-small-res-jbb", SAE_ID)
    with pytest.raises(ValueError, match=r"release 'gpt2-small-res-jb' has no sae_id 'blocks\.0\.hook_resid_prr'\. "
                                         r"Did you mean \['blocks\.0\.hook_resid_pre'.*saes_map"):
        load_registry_sae(RELEASE, "blocks.0.hook_resid_prr")
    with pytest.raises(ValueError, match="write it as 'sae_lens:RELEASE/SAE_ID'"):
        load_sae("sae_lens:gpt2-small-res-jb")


def test_registry_sae_not_cached_offline_says_the_hub_is_unreachable(offline_hub):
    with pytest.raises(ConnectionError, match=r"not in the Hugging Face cache \(.*hub\) and the hub is unreachable "
                                              r"\(HF_HUB_OFFLINE is set\).*hf download jbloom/GPT2-Small-SAEs-Reformatted"
                                              r".*load_sae\(DIR\)"):
        load_registry_sae(RELEASE, SAE_ID)
    assert not list(offline_hub.rglob("*.safetensors"))


def _cache_registry_copy(hub: Path) -> str:
    """Lay out a (tiny, for the tiny model) SAE where the HF cache keeps the registry entry's files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return random_topk_sae_dir(repo / "snapshots" / commit / SAE_ID, seed=3)


def test_registry_sae_loads_from_the_hf_cache_offline_and_serialises(offline_hub, tiny):
    from steering import Clamp, from_dict

    saved = load_sae(_cache_registry_copy(offline_hub))
    sae = load_registry_sae(RELEASE, SAE_ID)
    assert sae is not saved and torch.equal(sae.W_dec, saved.W_dec) and torch.equal(sae.W_enc, saved.W_enc)
    source = f"sae_lens:{RELEASE}/{SAE_ID}"
    assert sae_path(sae) == source and registry_id(sae) == (RELEASE, SAE_ID) and registry_id(saved) is None
    assert load_sae(source) is sae and load_registry_sae(RELEASE, SAE_ID) is sae
    record = Clamp(sae, {3: 2.0}).to_dict()
    assert record["sae"] == source
    x = torch.randint(10, 1000, (1, 8))
    with torch.no_grad():
        with from_dict(json.loads(json.dumps(record))).apply(tiny):
            back = tiny(x)
        with Clamp(saved, {3: 2.0}).apply(tiny):
            ref = tiny(x)
    assert torch.allclose(back, ref)


# --- HF causal-LM directories -------------------------------------------------------------------

def _save_tiny(kind: str, root: Path) -> Path:
    """A 2-layer random causal LM of `kind` with SmolLM2's tokenizer (and chat template), on disk."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM

    from lm.sources import tiny_model_dir

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, **ids)
    torch.manual_seed(0)
    model = {"llama": lambda: LlamaForCausalLM(LlamaConfig(head_dim=16, **common)),
             "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
             "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **ids))}[kind]()
    path = root / kind
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def hf_dir_model(request, tmp_path_factory):
    path = _save_tiny(request.param, tmp_path_factory.mktemp("hf_dirs"))
    return request.param, path, load_model(str(path), device="cpu")


def test_hf_directory_loads_with_hook_names_and_matches_hf(hf_dir_model):
    from transformers import AutoModelForCausalLM

    kind, path, model = hf_dir_model
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 64
    assert {"blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out"} <= set(model.hook_dict)
    ref = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    x = torch.randint(10, 1000, (2, 9))
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
        logits = model(x)
    assert torch.allclose(logits, out.logits, atol=1e-4)
    acts = forward_batch(model, x, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    assert torch.allclose(acts, out.hidden_states[1], atol=1e-4)  # after block 0 (no final norm at 1 of 2)


def test_hf_directory_generates_and_steering_changes_it(hf_dir_model):
    from lm.fastpath import FAST_ARCHITECTURES, fast_path
    from steering import Add

    kind, _, model = hf_dir_model
    fast = fast_path(model)
    assert (fast.hf is not None) == (kind in FAST_ARCHITECTURES) and (kind == "gpt2") == (fast.hf is None)
    kw = dict(max_new_tokens=6, min_new_tokens=6, temperature=0, progress=False)
    base = generate(model, ["Hello there"], **kw)[0]
    push = Add("blocks.0.hook_resid_post", 40 * F.normalize(torch.randn(64, generator=torch.Generator().manual_seed(1)), dim=0))
    with push.apply(model):
        pushed = generate(model, ["Hello there"], **kw)[0]
    assert len(base.ids) == 6 and pushed.ids.tolist() != base.ids.tolist()
    calls = []  # an attention-pattern hook forces the bridge's own forward: the same steered tokens
    with push.apply(model):
        bridge = generate(model, ["Hello there"], fwd_hooks=[("blocks.0.attn.hook_pattern",
                                                              lambda p, hook: calls.append(1) or p)], **kw)[0]
    assert calls and bridge.ids.tolist() == pushed.ids.tolist()
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())



def test_architecture_the_bridge_cannot_wrap_is_named(tmp_path):
    from transformers import AutoTokenizer, BioGptConfig, BioGptForCausalLM

    from lm.sources import tiny_model_dir

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    BioGptForCausalLM(BioGptConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)).save_pretrained(tmp_path / "biogpt")
    tok.save_pretrained(tmp_path / "biogpt")
    with pytest.raises(ValueError, match=r"no adapter for \['BioGptForCausalLM'\] \(model_type 'biogpt'\).*"
                                         r"SUPPORTED_ARCHITECTURES"):
        load_model(str(tmp_path / "biogpt"), device="cpu")

# --- SAEBench core metrics ----------------------------------------------------------------------

SAEBENCH_TOP = {"eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                "eval_result_details", "eval_result_unstructured", "sae_bench_commit_hash", "sae_lens_id",
                "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict"}
SAEBENCH_METRICS = {  # sae_bench/evals/core/eval_output.py, CoreMetricCategories
    "model_behavior_preservation": {"kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"},
    "model_performance_preservation": {"ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"},
    "reconstruction_quality": {"explained_variance", "explained_variance_legacy", "mse", "cossim"},
    "shrinkage": {"l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"},
    "sparsity": {"l0", "l1"},
    "token_stats": {"total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"},
    "misc_metrics": {"freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
                     "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim",
                     "average_max_decoder_cosine_sim", "frac_alive"},
}
SAEBENCH_DETAIL = {"index", "feature_density", "consistent_activation_heuristic", "encoder_bias", "encoder_norm",
                   "encoder_decoder_cosine_sim", "max_decoder_cosine_sim", "max_encoder_cosine_sim"}
SAEBENCH_CONFIG = {"model_name", "llm_dtype", "batch_size_prompts", "n_eval_reconstruction_batches",
                   "n_eval_sparsity_variance_batches", "dataset", "context_size", "compute_kl", "compute_ce_loss",
                   "compute_l2_norms", "compute_sparsity_metrics", "compute_variance_metrics",
                   "compute_featurewise_density_statistics", "compute_featurewise_weight_based_metrics",
                   "exclude_special_tokens_from_reconstruction", "verbose"}


def _by_hand(model, sae, tokens):
    """The reconstruction, sparsity and KL metrics straight from their definitions (position 0 excluded)."""
    with torch.no_grad():
        x = forward_batch(model, tokens, [HOOK])[HOOK][:, 1:]
        f = sae.encode(x)
        r = sae.decode(f)

        def spliced(new):
            def hook(h, hook):
                h = h.clone()
                h[:, 1:] = new
                return h
            with model.hooks(fwd_hooks=[(HOOK, hook)]):
                return model(tokens)[:, 1:-1].log_softmax(-1)

        clean = model(tokens)[:, 1:-1].log_softmax(-1)
        kl = lambda lp: (clean.exp() * (clean - lp)).sum(-1).mean().item()
        return {"mse": (x - r).pow(2).sum(-1).mean().item(), "cossim": F.cosine_similarity(x, r, dim=-1).mean().item(),
                "l1": f.abs().sum(-1).mean().item(), "kl_div_with_sae": kl(spliced(r)),
                "kl_div_with_ablation": kl(spliced(torch.zeros_like(r))), "fires": (f > 0)}


def _strict_json(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the output"))


def test_saebench_core_metrics_schema_and_values(tiny, tmp_path):
    sae = load_sae(random_topk_sae_dir(tmp_path / "sae", seed=1))
    with torch.no_grad():  # SAELens initialises W_enc = W_dec.T: untie them so encoder and decoder stats differ
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=torch.Generator().manual_seed(0)))
    tokens = torch.randint(200, 40_000, (5, 20), generator=torch.Generator().manual_seed(2))
    metrics = evaluate_sae(sae, tiny, tokens, cfg=EvalConfig(batch_size=2, count_rows=True), progress=False)
    core = core_metrics(metrics, sae)
    assert set(core) == SAEBENCH_TOP and core["eval_type_id"] == "core"
    assert set(core["eval_config"]) == SAEBENCH_CONFIG and core["eval_config"]["n_eval_reconstruction_batches"] == 3
    assert {k: set(v) for k, v in core["eval_result_metrics"].items()} == SAEBENCH_METRICS
    m = core["eval_result_metrics"]
    hand = _by_hand(tiny, sae, tokens)
    for cat, key in [("reconstruction_quality", "mse"), ("reconstruction_quality", "cossim"), ("sparsity", "l1"),
                     ("model_behavior_preservation", "kl_div_with_sae"), ("model_behavior_preservation", "kl_div_with_ablation")]:
        assert m[cat][key] == pytest.approx(hand[key], rel=1e-4, abs=1e-6), key
    kl = m["model_behavior_preservation"]
    assert kl["kl_div_score"] == pytest.approx((kl["kl_div_with_ablation"] - kl["kl_div_with_sae"]) / kl["kl_div_with_ablation"])
    assert m["model_performance_preservation"] == {
        "ce_loss_score": metrics["ce_loss_recovered"], "ce_loss_with_ablation": metrics["ce_loss_zero_ablation"],
        "ce_loss_with_sae": metrics["ce_loss_with_sae"], "ce_loss_without_sae": metrics["ce_loss_clean"]}
    assert m["sparsity"]["l0"] == 8 and m["token_stats"]["total_tokens_eval_reconstruction"] == 5 * 19
    assert m["misc_metrics"]["average_max_decoder_cosine_sim"] == pytest.approx(
        sum(d["max_decoder_cosine_sim"] for d in core["eval_result_details"]) / 256, abs=1e-4)
    assert m["misc_metrics"]["frac_alive"] == hand["fires"].flatten(0, 1).any(0).float().mean().item()
    assert m["reconstruction_quality"]["explained_variance_legacy"] is None and core["sae_lens_id"] is None
    details = core["eval_result_details"]
    assert len(details) == 256 and all(set(d) == SAEBENCH_DETAIL for d in details) and details[7]["index"] == 7
    dec, enc = F.normalize(sae.W_dec, dim=-1), F.normalize(sae.W_enc.T, dim=-1)
    dec_sims, enc_sims = dec @ dec.T - 3 * torch.eye(256), enc @ enc.T - 3 * torch.eye(256)
    fires = hand["fires"]
    for i in (0, 7, 200):
        d = details[i]
        assert d["feature_density"] == round(fires[..., i].float().mean().item(), 5)
        assert d["encoder_norm"] == pytest.approx(sae.W_enc[:, i].norm().item(), abs=1e-5)
        assert d["encoder_bias"] == pytest.approx(sae.b_enc[i].item(), abs=1e-5)
        assert d["encoder_decoder_cosine_sim"] == pytest.approx((enc[i] @ dec[i]).item(), abs=1e-5)
        assert d["max_decoder_cosine_sim"] == pytest.approx(dec_sims[i].max().item(), abs=1e-5)
        assert d["max_encoder_cosine_sim"] == pytest.approx(enc_sims[i].max().item(), abs=1e-5)
        assert d["max_encoder_cosine_sim"] != d["max_decoder_cosine_sim"]
        rows = fires[..., i].any(1).sum().item()
        want = fires[..., i].sum().item() / rows if rows else None
        assert d["consistent_activation_heuristic"] == (pytest.approx(want, abs=1e-5) if rows else None)
    path = write_core_metrics(tmp_path / "saebench_core.json", metrics, sae, eval_id="run-1")
    back = _strict_json(path.read_text())
    assert back["eval_id"] == "run-1" and back["eval_result_metrics"] == _strict_json(json.dumps(m))
    assert back["sae_cfg_dict"]["d_sae"] == 256 and back["sae_cfg_dict"]["metadata"]["hook_name"] == HOOK


def test_evaluate_dir_writes_saebench_core_json(tiny, tmp_path):
    from tests.helpers import identity_sae_dir

    sae_dir, text = identity_sae_dir(tmp_path)
    metrics, _ = evaluate_dir(sae_dir, tiny, saebench=sae_dir / "saebench_core.json", progress=False)
    assert "feature_rows" not in metrics and not list(sae_dir.glob(".saebench_core.json*"))
    core = _strict_json((sae_dir / "saebench_core.json").read_text())
    m = core["eval_result_metrics"]
    assert core["eval_config"]["model_name"] == "tiny" and core["eval_config"]["dataset"] == str(text)
    assert m["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(0, abs=1e-6)
    assert m["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1, abs=1e-6)
    assert m["reconstruction_quality"]["cossim"] == pytest.approx(1, abs=1e-6) and m["sparsity"]["l0"] == 64
    assert all(isinstance(d["consistent_activation_heuristic"], float) for d in core["eval_result_details"])
    assert math.isclose(m["model_performance_preservation"]["ce_loss_score"], metrics["ce_loss_recovered"])
