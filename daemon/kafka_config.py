"""Connection and security settings shared by every Kafka client the daemon makes (the consumer,
the dead-letter producer, the re-index offset probe), so they cannot drift apart."""

from __future__ import annotations

from typing import Any

from avindex.daemon.settings import KafkaSettings

__all__ = ["client_config"]


def client_config(s: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by the consumer and the dead-letter producer."""
    config: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.client_id,
        "request_timeout_ms": s.request_timeout_ms,
        "security_protocol": s.security_protocol,
    }
    optional = {
        "sasl_mechanism": s.sasl_mechanism,
        "sasl_plain_username": s.sasl_username,
        "sasl_plain_password": s.sasl_password,
        "ssl_cafile": s.ssl_cafile,
        "ssl_certfile": s.ssl_certfile,
        "ssl_keyfile": s.ssl_keyfile,
        "ssl_password": s.ssl_password,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    if s.security_protocol in ("SSL", "SASL_SSL"):
        config["ssl_check_hostname"] = s.ssl_check_hostname
    return config
