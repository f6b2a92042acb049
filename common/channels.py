"""How this project's clients ride over restarts and connection ends: gRPC's own retry policy.

A server drains on SIGTERM (it finishes what is in flight, then closes) and ends every connection
after `max_connection_age` (so that clients re-resolve DNS and reach new pods). Either way a call
can meet a closed connection: gRPC answers UNAVAILABLE ("GOAWAY received", "Socket closed")
before the server ever saw it. And a call that reached a server in the instant it began to shut
down, before any handler took it, is cancelled by the server: CANCELLED, though nothing ran. The retry policy below, in the channel's service config, makes
gRPC itself send such a call again on a new connection, with backoff, within the call's deadline;
nothing in our code loops. Classification calls have no side effects, so a retry is always safe.

Two kinds of callers:
- a *client* of the gateway (`gateway.client`, the demo page) also waits for the channel to be
  ready (`wait_for_ready`): while a gateway restarts, its calls wait for it within their deadline
  instead of failing at once;
- the *gateway*, calling the model services, must not wait: a stage that is down is degraded
  around at once, so it retries UNAVAILABLE and fails fast when there is nothing to connect to.

A full batching queue is deliberately not UNAVAILABLE but RESOURCE_EXHAUSTED (ErrorInfo reason
QUEUE_FULL, `common.errors.QueueFull`), which no policy here retries: resending at once would add
load to a service that is already saturated; the gateway degrades around it instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retryPolicy (gRFC A6) for every method of a channel."""

    max_attempts: int = 5           # gRPC caps this at 5, the first try included
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE", "CANCELLED")

    def method_config(self) -> dict:
        return {
            "name": [{}],  # every service and method of the channel
            "retryPolicy": {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s:.3f}s",
                "maxBackoff": f"{self.max_backoff_s:.3f}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": list(self.retryable_status_codes),
            },
        }


def service_config(retry: RetryPolicy | None = RetryPolicy(), load_balancing: str | None = None) -> str:
    """The JSON service config a channel option carries: retries and, optionally, a load balancer."""
    config: dict = {}
    if retry is not None:
        config["methodConfig"] = [retry.method_config()]
    if load_balancing:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    return json.dumps(config)


def retrying_options(retry: RetryPolicy | None = RetryPolicy(), load_balancing: str | None = None,
                     max_message_bytes: int | None = None) -> list[tuple[str, object]]:
    """Channel options: the service config, retries on, a reconnect backoff capped at a second
    (a restarted pod is back within a second, not after gRPC's default of up to 120 s)."""
    options: list[tuple[str, object]] = [
        ("grpc.service_config", service_config(retry, load_balancing)),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if max_message_bytes is not None:
        options += [("grpc.max_send_message_length", max_message_bytes),
                    ("grpc.max_receive_message_length", max_message_bytes)]
    return options
