"""A SASL_SSL listener on the local broker: SCRAM users over TLS, ACLs enforced by KRaft's
StandardAuthorizer.

Why beside the PLAINTEXT listener and not instead of it: the test session shares one broker
(one JVM on two cores); the plain tests keep the PLAINTEXT port, whose clients are
User:ANONYMOUS and a super user (as the broker's own controller connection must be), while the
security tests use only the SASL_SSL port, where every client is its SCRAM principal and gets
exactly what the ACLs grant. Both ports listen on 127.0.0.1 only.

Users and ACLs are created through Kafka's admin API (AlterUserScramCredentials, CreateAcls,
the calls `kafka-configs.sh` and `kafka-acls.sh` make), from any client the broker lets do so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
SCRAM_ITERATIONS = 8192


@dataclass(frozen=True)
class SecureListener:
    """Where the SASL_SSL listener listens and the broker's TLS identity.

    `keystore_pem`: an unencrypted PKCS#8 private key followed by its certificate chain (Kafka's
    PEM key store); clients trust the CA that signed it through `kafka.ssl_cafile`.
    """

    port: int
    keystore_pem: Path


def server_properties(listener: SecureListener) -> dict[str, str]:
    """The broker settings that add the listener and switch the authorizer on."""
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    props = {
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": ",".join(MECHANISMS),
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(listener.keystore_pem),
        "authorizer.class.name": AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": "User:ANONYMOUS",
    }
    for mechanism in MECHANISMS:
        props[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = jaas
    return props


def create_users(admin: AdminClient, users: dict[str, str], *, timeout: float = 30.0) -> None:
    """Create (or reset) SCRAM-SHA-512 and -256 credentials for each user name -> password."""
    for mechanism in (ScramMechanism.SCRAM_SHA_512, ScramMechanism.SCRAM_SHA_256):
        upserts = [  # one mechanism per request: Kafka refuses a user twice in one
            UserScramCredentialUpsertion(name, ScramCredentialInfo(mechanism, SCRAM_ITERATIONS),
                                         password.encode())
            for name, password in users.items()
        ]
        for future in admin.alter_user_scram_credentials(
                upserts, request_timeout=timeout).values():
            future.result(timeout=timeout)


@dataclass(frozen=True)
class Grant:
    """An ALLOW ACL: `operation` on `resource` named `name` (or every name starting with it)."""

    user: str
    operation: AclOperation
    resource: ResourceType
    name: str
    prefixed: bool = False

    def binding(self) -> AclBinding:
        return AclBinding(self.resource, self.name, self._pattern(), f"User:{self.user}", "*",
                          self.operation, AclPermissionType.ALLOW)

    def filter(self) -> AclBindingFilter:
        return AclBindingFilter(self.resource, self.name, self._pattern(), f"User:{self.user}",
                                "*", self.operation, AclPermissionType.ALLOW)

    def _pattern(self) -> ResourcePatternType:
        return ResourcePatternType.PREFIXED if self.prefixed else ResourcePatternType.LITERAL


def grant(admin: AdminClient, grants: Iterable[Grant], *, timeout: float = 30.0) -> None:
    bindings = [g.binding() for g in grants]
    for future in admin.create_acls(bindings, request_timeout=timeout).values():
        future.result(timeout=timeout)


def revoke(admin: AdminClient, grants: Iterable[Grant], *, timeout: float = 30.0) -> None:
    filters = [g.filter() for g in grants]
    for future in admin.delete_acls(filters, request_timeout=timeout).values():
        with contextlib.suppress(KafkaException):  # already gone
            future.result(timeout=timeout)


def collector_grants(user: str, topics: Iterable[str]) -> list[Grant]:
    """What a collector needs: write (and see) the topics it produces to, nothing else."""
    return [Grant(user, op, ResourceType.TOPIC, topic)
            for topic in topics for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]


def worker_grants(user: str, *, inputs: Iterable[str], outputs: Iterable[str],
                  group: str) -> list[Grant]:
    """What a worker needs: read its inputs, own its outputs, its internal topics (Faust
    names them after the group: changelogs, the assignor topic) and its consumer group."""
    grants = [Grant(user, op, ResourceType.TOPIC, topic)
              for topic in inputs for op in (AclOperation.READ, AclOperation.DESCRIBE)]
    grants += [Grant(user, AclOperation.ALL, ResourceType.TOPIC, topic) for topic in outputs]
    grants += [Grant(user, AclOperation.ALL, ResourceType.TOPIC, group, prefixed=True),
               Grant(user, AclOperation.ALL, ResourceType.GROUP, group, prefixed=True)]
    return grants
