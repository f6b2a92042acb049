"""The gateway's own metrics, beside the kit's gRPC metrics: time per stage, and what is served:
answers per predicted class and modalities, how sure the answers are, and the degraded ones."""

from prometheus_client import Counter, Histogram

from common.metrics import LATENCY_BUCKETS

# Top-class probability: finer near 1, where most text answers sit.
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

STAGE_LATENCY = Histogram(
    "gateway_stage_seconds", "Time each stage of a classification call took, as the gateway saw it.",
    ["stage"], buckets=LATENCY_BUCKETS)
ANSWERS = Counter(
    "gateway_answers_total", "Products classified, by the modalities the answer used and its top class.",
    ["modalities", "code"])
TOP_PROBABILITY = Histogram(
    "gateway_top_probability", "Probability of the top class of each answer.", ["modalities"],
    buckets=PROBABILITY_BUCKETS)
NEEDS_REVIEW = Counter(
    "gateway_needs_review_answers_total",
    "Answers that need a human look: top probability below the gateway's review_threshold.", ["modalities"])
# Zero from the start, so that the review share reads 0 rather than nothing before the first one.
for _modalities in ("text", "image", "text+image"):
    NEEDS_REVIEW.labels(_modalities)
DEGRADED = Counter(
    "gateway_degraded_answers_total", "Products answered in degraded mode, by reason.", ["reason"])
