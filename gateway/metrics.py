"""The gateway's own metrics, beside the kit's gRPC metrics: time per stage and degraded answers."""

from prometheus_client import Counter, Histogram

from common.metrics import LATENCY_BUCKETS

STAGE_LATENCY = Histogram(
    "gateway_stage_seconds", "Time each stage of a classification call took, as the gateway saw it.",
    ["stage"], buckets=LATENCY_BUCKETS)
ANSWERS = Counter(
    "gateway_answers_total", "Products classified, by the modalities the answer used.", ["modalities"])
DEGRADED = Counter(
    "gateway_degraded_answers_total", "Products answered in degraded mode, by reason.", ["reason"])
NEEDS_REVIEW = Counter(
    "gateway_needs_review_answers_total",
    "Products whose answer's top score is below its model's review threshold (needs_review).")
