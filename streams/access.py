"""Before a worker starts: can it reach Kafka, with these credentials, and do the cluster's ACLs
let it read its inputs and own its outputs and group?

Why a check of its own: Faust and aiokafka meet a refused password or a missing ACL deep in
their start-up, as retries and tracebacks that never name the setting or the topic. Kafka's
admin API says per topic and group what this principal may do (authorized operations), so
the worker stops with one line that names the topic, the operation and the principal.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation

from costpipe.core.kafka_clients import (
    SecurityLatch,
    denied_hint,
    list_topics_or_explain,
    quiet_admin,
)
from costpipe.core.settings import Settings

TIMEOUT_S = 20.0


class AccessError(RuntimeError):
    """The worker cannot work with this cluster; the text is one line that says what to fix."""


def needed_operations(settings: Settings) -> dict[str, set[AclOperation]]:
    """Topic -> what the worker does with it (inputs are read, its own topics read and written)."""
    t = settings.topics
    read = {AclOperation.READ, AclOperation.DESCRIBE}
    own = read | {AclOperation.WRITE}
    needs = {t.requests: read, t.gpu: read}
    needs.update({name: own for name in (t.costs, t.partials, t.windows, t.alerts,
                                         t.deadletter, t.gpuwork, t.members)})
    return needs


def check_worker_access(settings: Settings) -> None:
    """Raise `AccessError` when the cluster refuses the credentials or an ACL is missing."""
    latch = SecurityLatch(settings)
    admin = quiet_admin(settings, latch)
    try:
        list_topics_or_explain(admin, latch, TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        text = error.str() if isinstance(error, KafkaError) else str(error)
        raise AccessError(latch.hint or f"Kafka at {settings.bootstrap_servers} does not "
                          f"answer ({text}); check kafka.bootstrap_servers") from None
    needs = needed_operations(settings)
    futures = admin.describe_topics(TopicCollection(list(needs)),
                                    include_authorized_operations=True,
                                    request_timeout=TIMEOUT_S)
    for topic, future in futures.items():
        try:
            description = future.result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise AccessError(denied_hint(settings, f"topic {topic}", "/".join(
                    sorted(op.name for op in needs[topic])))) from None
            continue  # missing topics are created at start (or said so by the broker check)
        _require(settings, f"topic {topic}", description.authorized_operations, needs[topic])
    group = settings.servers.worker_group
    try:
        description = admin.describe_consumer_groups(
            [group], include_authorized_operations=True,
            request_timeout=TIMEOUT_S)[group].result(timeout=TIMEOUT_S)
    except KafkaException as exc:
        code = exc.args[0].code() if exc.args else None
        if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
            raise AccessError(denied_hint(settings, f"consumer group {group}", "READ")) from None
        return
    _require(settings, f"consumer group {group}", description.authorized_operations,
             {AclOperation.READ})


def _require(settings: Settings, what: str, granted: list[AclOperation] | None,
             needed: set[AclOperation]) -> None:
    if granted is None:  # the cluster has no authorizer: everything is allowed
        return
    allowed = set(granted)
    if AclOperation.ALL in allowed:
        return
    missing = sorted(op.name for op in needed - allowed)
    if missing:
        raise AccessError(denied_hint(settings, what, "/".join(missing)))
