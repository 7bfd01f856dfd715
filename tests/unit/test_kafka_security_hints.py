"""Security problems in words: which setting to fix, and never the secret."""

from __future__ import annotations

from costpipe.core.kafka_clients import denied_hint, principal, security_hint
from costpipe.core.settings import Settings

SECRET = "pw-Zq9-never-shown"
SASL = Settings.model_validate({"kafka": {
    "bootstrap_servers": "k1:9093", "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc", "sasl_password": SECRET}})


def test_a_refused_password_names_the_two_settings_and_not_the_password() -> None:
    text = ("sasl_ssl://k1:9093/bootstrap: SASL authentication error: Authentication failed "
            "during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512")
    hint = security_hint(SASL, text)
    assert hint and "kafka.sasl_username" in hint and "kafka.sasl_password" in hint
    assert "'svc'" in hint and SECRET not in hint


def test_an_untrusted_certificate_names_the_ca_setting() -> None:
    text = ("ssl://k1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
            "certificate verify failed: broker certificate could not be verified")
    hint = security_hint(SASL, text)
    assert hint and "kafka.ssl_cafile" in hint and "COSTPIPE_KAFKA__SSL_CAFILE" in hint


def test_other_errors_are_not_security_problems() -> None:
    assert security_hint(SASL, "Connect to ipv4#127.0.0.1:9093 failed: Connection refused") \
        is None


def test_a_denial_names_principal_resource_and_operation() -> None:
    assert principal(SASL) == "User:svc"
    assert principal(Settings()) == "User:ANONYMOUS"
    hint = denied_hint(SASL, "topic costpipe.requests.v1", "WRITE")
    assert "User:svc" in hint and "costpipe.requests.v1" in hint and "WRITE" in hint
    assert SECRET not in hint and SECRET not in repr(SASL)
