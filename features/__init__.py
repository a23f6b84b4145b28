"""Find and explain SAE features: per-latent stats, dashboards, labels and concept search.

    from features import analyze, write_dashboards, search_concept, load_sae
    stats = analyze(model, sae, tokens, cache_dir="runs/feat")          # one batched pass
    write_dashboards(stats, model.tokenizer, "runs/dash")               # static HTML
    result = search_concept(model, sae, "golden_gate_bridge")           # held-out AUROC
"""

from features.analysis import AnalysisConfig, FeatureStats, analyze
from features.concepts import (Concept, ConceptResult, SearchConfig, auroc, dataset_tokens, latent_max_activations,
                               search_concept, write_concepts_json)
from features.dashboard import write_dashboards
from features.labels import auto_labels, make_label
from features.logit_lens import logit_lens, unembedding
from features.sae import DEFAULT_SAE, check_features, check_sae, load_sae

__all__ = ["AnalysisConfig", "Concept", "ConceptResult", "DEFAULT_SAE", "FeatureStats", "SearchConfig", "analyze",
           "auroc", "auto_labels", "check_features", "check_sae", "dataset_tokens", "latent_max_activations",
           "load_sae", "logit_lens", "make_label", "search_concept", "unembedding", "write_concepts_json",
           "write_dashboards"]
