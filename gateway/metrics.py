"""The gateway's own metrics, beside the kit's gRPC metrics: time per stage, degraded answers and
ClassifyStream products."""

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS

STAGE_LATENCY = Histogram(
    "gateway_stage_seconds", "Time each stage of a classification call took, as the gateway saw it.",
    ["stage"], buckets=LATENCY_BUCKETS)
ANSWERS = Counter(
    "gateway_answers_total", "Products classified, by the modalities the answer used.", ["modalities"])
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
