"""Client configuration for both Kafka libraries, derived from the one settings object.

confluent-kafka (collectors, tools) and aiokafka (under Faust) spell the same options
differently; this is the only place that translates, so SASL/SSL set once reaches both.
"""

from __future__ import annotations

import ssl
from typing import Any

from costpipe.core import limits
from costpipe.core.settings import Settings


def confluent_common(settings: Settings) -> dict[str, Any]:
    kafka = settings.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = kafka.sasl_password or ""
    if kafka.ssl_cafile:
        config["ssl.ca.location"] = kafka.ssl_cafile
    if kafka.ssl_certfile:
        config["ssl.certificate.location"] = kafka.ssl_certfile
    if kafka.ssl_keyfile:
        config["ssl.key.location"] = kafka.ssl_keyfile
    return config


def confluent_producer(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, compressed, batching producer (docs/decisions/2026-11-25-arrow-envelopes.md)."""
    config = confluent_common(settings)
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": settings.kafka.compression,
            "linger.ms": settings.kafka.linger_ms,
            "message.max.bytes": limits.request_bytes(settings.kafka),
        }
    )
    config.update(overrides)
    return config


def confluent_consumer(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    config = confluent_common(settings)
    config.update(
        {
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    config.update(overrides)
    return config


def confluent_admin(settings: Settings) -> dict[str, Any]:
    return confluent_common(settings)


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `faust.App(...)`: broker URL plus credentials for aiokafka."""
    import faust  # deferred: importing faust is slow and only workers need it

    kafka = settings.kafka
    servers = ";".join(f"kafka://{hp.strip()}" for hp in settings.bootstrap_servers.split(","))
    options: dict[str, Any] = {"broker": servers}
    context: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    if kafka.sasl_mechanism:
        username, password = kafka.sasl_username or "", kafka.sasl_password or ""
        if kafka.sasl_mechanism == "PLAIN":
            options["broker_credentials"] = faust.SASLCredentials(
                username=username, password=password, ssl_context=context
            )
        else:
            options["broker_credentials"] = faust.SASLCredentials(
                username=username, password=password, mechanism=kafka.sasl_mechanism,
                ssl_context=context,
            )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options
