"""Client configuration for both Kafka libraries, derived from the one settings object.

confluent-kafka (collectors, tools) and aiokafka (under Faust) spell the same options
differently; this is the only place that translates, so SASL/SSL set once reaches both.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

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


# ---------------------------------------------------------------- security problems, in words

_AUTH_MARKERS = ("SASL authentication error", "Authentication failed", "invalid credentials",
                 "SaslAuthenticate", "SASL_AUTHENTICATION_FAILED")
_TLS_MARKERS = ("certificate verify failed", "CERTIFICATE_VERIFY_FAILED", "self-signed",
                "unable to get local issuer certificate", "self signed certificate")


def principal(settings: Settings) -> str:
    """The principal Kafka sees for these settings, as its ACLs name it."""
    kafka = settings.kafka
    if kafka.sasl_mechanism:
        return f"User:{kafka.sasl_username or ''}"
    if kafka.security_protocol == "SSL" and kafka.ssl_certfile:
        return "the principal of the TLS client certificate (kafka.ssl_certfile)"
    return "User:ANONYMOUS"


def is_security_problem(text: str) -> bool:
    """Whether a client error or log line is about credentials or TLS trust."""
    return any(marker in text for marker in (*_AUTH_MARKERS, *_TLS_MARKERS))


def security_hint(settings: Settings, text: str) -> str | None:
    """One line that says which setting to fix, when a client error is about credentials or
    TLS trust; None for anything else. Never repeats a secret (error texts hold none)."""
    kafka, where = settings.kafka, settings.bootstrap_servers
    if any(marker in text for marker in _AUTH_MARKERS):
        return (f"Kafka at {where} rejected the SASL credentials of user "
                f"'{kafka.sasl_username or ''}' ({kafka.sasl_mechanism}): check "
                "kafka.sasl_username and kafka.sasl_password (COSTPIPE_KAFKA__SASL_USERNAME, "
                "COSTPIPE_KAFKA__SASL_PASSWORD) and kafka.sasl_mechanism")
    if any(marker in text for marker in _TLS_MARKERS):
        return (f"the TLS certificate of Kafka at {where} is not trusted (certificate verify "
                "failed): set kafka.ssl_cafile (COSTPIPE_KAFKA__SSL_CAFILE) to the PEM file of "
                "the CA that signed the broker's certificate")
    if "SSL handshake failed" in text or "Disconnected while requesting ApiVersion" in text:
        return (f"the connection to Kafka at {where} failed during the handshake: check that "
                f"kafka.security_protocol ({kafka.security_protocol}) is the listener's "
                "protocol (COSTPIPE_KAFKA__SECURITY_PROTOCOL)")
    return None


class SecurityLatch:
    """An `error_cb` for confluent-kafka clients that keeps the last security problem in words
    (librdkafka reports it there; the call that fails says only 'transport failure')."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.hint: str | None = None

    def __call__(self, error: Any) -> None:
        text = error.str() if hasattr(error, "str") else str(error)
        hint = security_hint(self._settings, text)
        if hint is not None:
            self.hint = hint


def denied_hint(settings: Settings, what: str, operation: str) -> str:
    """One line for an authorization failure: who, what, and what to ask for."""
    return (f"Kafka at {settings.bootstrap_servers} denies {principal(settings)} {operation} "
            f"on {what}: ask the cluster's admin for an ACL that allows it (README: Running "
            "against an existing Kafka)")


_QUIET = logging.getLogger("costpipe.kafka.admin")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def quiet_admin(settings: Settings, latch: SecurityLatch | None = None) -> AdminClient:
    """An admin client whose librdkafka chatter (connection refused while polling, refused
    logins) is dropped; with `latch`, what went wrong is kept there in words instead."""
    config: dict[str, Any] = {**confluent_admin(settings), "logger": _QUIET}
    if latch is not None:
        config["error_cb"] = latch
    return AdminClient(config)


def list_topics_or_explain(admin: AdminClient, latch: SecurityLatch, timeout: float) -> Any:
    """`admin.list_topics`, but given up as soon as `latch` holds a security problem (a wrong
    password stays wrong: no use waiting the whole timeout). Raises KafkaException on failure;
    `latch.hint` then says why when it is a security problem."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.1, min(2.0, left)))
        except KafkaException:
            admin.poll(0)  # serves error_cb, where librdkafka says what went wrong
            if latch.hint or deadline - time.monotonic() <= 0:
                raise
