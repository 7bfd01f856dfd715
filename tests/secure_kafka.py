"""The test session's secure Kafka: the shared test broker's SASL_SSL listener, with a private
CA made here, SCRAM users and ACLs per test (`costpipe.broker.secure`)."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives import serialization

from costpipe.broker import secure
from costpipe.broker.secure import Grant, SecureListener
from costpipe.core.kafka_clients import SecurityLatch, list_topics_or_explain, quiet_admin
from costpipe.core.settings import Settings

SECURE_PORT = 29192


def listener(state_dir: Path) -> SecureListener:
    """The test broker's SASL_SSL listener; its CA and key store are made on first use and
    kept with the broker's state (a broker still running from an earlier session uses them)."""
    tls = state_dir / "tls"
    keystore, ca = tls / "broker.pem", tls / "ca.pem"
    if not (keystore.exists() and ca.exists()):
        import trustme

        tls.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA(organization_name="costpipe test CA")
        leaf = authority.issue_cert("127.0.0.1", "localhost")
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
        pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        keystore.write_bytes(pkcs8 + chain)
        keystore.chmod(0o600)
        ca.write_bytes(authority.cert_pem.bytes())
    return SecureListener(port=SECURE_PORT, keystore_pem=keystore)


@dataclass
class SecureCluster:
    """The SASL_SSL side of the session broker, and its admin (the PLAINTEXT super user)."""

    bootstrap: str
    cafile: Path
    admin: AdminClient

    def user(self, role: str) -> tuple[str, str]:
        """A new SCRAM user (unique name, random password) with no ACLs yet."""
        name, password = f"{role}-{uuid.uuid4().hex[:8]}", f"pw-{secrets.token_hex(12)}"
        secure.create_users(self.admin, {name: password})
        self._wait_login(name, password)
        return name, password

    def _wait_login(self, name: str, password: str, timeout: float = 30.0) -> None:
        """A new credential reaches the listener a moment after the admin call returns (seen
        right after the broker starts): wait until it logs in."""
        settings = Settings.model_validate({"kafka": self.kafka_settings(name, password)})
        deadline = time.monotonic() + timeout
        while True:
            latch = SecurityLatch(settings)
            try:
                list_topics_or_explain(quiet_admin(settings, latch), latch, 5.0)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def grant(self, grants: list[Grant]) -> None:
        secure.grant(self.admin, grants)

    def revoke(self, grants: list[Grant]) -> None:
        secure.revoke(self.admin, grants)

    def env(self, user: str, password: str, *, cafile: Path | None = None) -> dict[str, str]:
        """The same settings as environment: what makes any costpipe component use this user."""
        kafka = self.kafka_settings(user, password, cafile=cafile)
        return {"KAFKA_BOOTSTRAP_SERVERS": kafka.pop("bootstrap_servers"),
                **{f"COSTPIPE_KAFKA__{key.upper()}": value for key, value in kafka.items()}}

    def kafka_settings(self, user: str, password: str, *, cafile: Path | None = None
                       ) -> dict[str, str]:
        """A `[kafka]` settings table for this user on the SASL_SSL listener."""
        return {"bootstrap_servers": self.bootstrap, "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": user,
                "sasl_password": password, "ssl_cafile": str(cafile or self.cafile)}
