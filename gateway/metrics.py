"""The gateway's own metrics, beside the kit's gRPC metrics: time per stage, what is served
(answers per predicted class and modalities, how sure the answers are, the degraded ones) and
ClassifyStream products."""

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS

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
    "Answers that need a human look (needs_review: the top probability is below the review threshold of "
    "the model that produced the scores).", ["modalities"])
DEGRADED = Counter(
    "gateway_degraded_answers_total", "Products answered in degraded mode, by reason.", ["reason"])
STREAM_ITEMS = Counter(
    "gateway_stream_items_total", "ClassifyStream products answered, by outcome: OK or the product's status code.",
    ["code"])
STREAM_HELD = Gauge(
    "gateway_stream_products_held",
    "ClassifyStream products read and not yet answered, all streams together (each stream holds at most its window).")
STREAM_GROUP_SIZE = Histogram(
    "gateway_stream_group_size", "Products per pipeline call made for ClassifyStream.", buckets=BATCH_SIZE_BUCKETS)

MODALITIES = ("text", "image", "text+image")
# Series at zero from the start: a review share of 0 reads 0, not nothing, and Prometheus'
# increase() counts a series' first answers only if it saw the series before them.
for _modalities in MODALITIES:
    NEEDS_REVIEW.labels(_modalities)
    TOP_PROBABILITY.labels(_modalities)
_answer_codes: set[int] = set()


def know_codes(codes) -> None:
    """Zero answer series for every class the models answer with (27 x 3 modalities), created with
    the first answer that names the classes: only that one answer goes uncounted by increase()."""
    if not _answer_codes.issuperset(codes):
        for code in set(codes) - _answer_codes:
            for modalities in MODALITIES:
                ANSWERS.labels(modalities, str(code))
            _answer_codes.add(code)
