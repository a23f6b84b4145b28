"""Find and explain SAE features: per-latent stats, dashboards, labels and concept search.

    from features import analyze, write_dashboards, search_concept, load_sae
    stats = analyze(model, sae, tokens, cache_dir="runs/feat")          # one batched pass
    write_dashboards(stats, model.tokenizer, "runs/dash")               # static HTML
    result = search_concept(model, sae, "golden_gate_bridge")           # held-out AUROC

Module map (SAE access itself is `saes.access`; a few of its names are re-exported here):
    analysis.py      one-pass per-latent statistics (`FeatureStats`), dataset rows, `feature_labels`
    labels.py        automatic labels; logit_lens.py: decoder rows read through the unembedding
    dashboard.py     static HTML pages (templates/)
    concept_sets.py  the concept-set JSONs (concepts/): `Concept` schema and the one reader, `load_concept`
    concept_search.py  ranking latents by held-out AUROC, and the raw difference-of-means counterpart
    latents.py       the chosen latents in an SAE directory's concepts.json: written here, read by steering
    neuronpedia.py   chosen features in Neuronpedia's bulk-import layout (`export_features`)
    stats.py         the one AUROC and the one difference of means
"""

from saes.access import DEFAULT_SAE, check_features, check_sae, load_sae
from features.analysis import AnalysisConfig, FeatureStats, analyze, dataset_tokens, feature_labels
from features.concept_search import ConceptResult, SearchConfig, format_example, search_concept
from features.concept_sets import Concept, load_concept
from features.dashboard import write_dashboards
from features.labels import auto_labels, make_label
from features.latents import (concept_latent, concept_max_activations, latent_max_activations, load_concept_latents,
                              write_concepts_json)
from features.logit_lens import logit_lens, unembedding
from features.neuronpedia import NeuronpediaConfig, export_features
from features.stats import auroc, mean_difference

__all__ = ["AnalysisConfig", "Concept", "ConceptResult", "DEFAULT_SAE", "FeatureStats", "NeuronpediaConfig",
           "SearchConfig", "analyze", "auroc", "auto_labels", "check_features", "check_sae", "concept_latent",
           "concept_max_activations", "dataset_tokens", "export_features", "feature_labels", "format_example",
           "latent_max_activations", "load_concept", "load_concept_latents", "load_sae", "logit_lens", "make_label",
           "mean_difference", "search_concept", "unembedding", "write_concepts_json", "write_dashboards"]
