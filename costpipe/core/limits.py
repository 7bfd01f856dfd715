"""Message-size limits, all derived from one setting: `kafka.max_message_bytes`.

Why one value: the producers, the codec, the broker and its topics, and the consumers must agree,
or a message one side accepts crashes the other (docs/decisions/2026-11-30-message-size-limits.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costpipe.core.settings import KafkaSettings

RECORD_OVERHEAD_BYTES = 64 * 1024  # Kafka record and batch framing, headers, key


def max_message_bytes(kafka: KafkaSettings) -> int:
    """Largest message value costpipe sends or accepts (the codec refuses larger ones)."""
    return kafka.max_message_bytes


def request_bytes(kafka: KafkaSettings) -> int:
    """Producer request / topic `max.message.bytes`: one message plus its framing."""
    return kafka.max_message_bytes + RECORD_OVERHEAD_BYTES


def broker_bytes(kafka: KafkaSettings) -> int:
    """The local broker's `message.max.bytes` and `replica.fetch.max.bytes`."""
    return 2 * kafka.max_message_bytes


def fetch_bytes(kafka: KafkaSettings) -> int:
    """Consumers fetch at least two whole messages per partition request."""
    return 2 * kafka.max_message_bytes
