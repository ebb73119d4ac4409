"""Settings: defaults < file < environment, typed coercion, clear errors, masked secrets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from avindex.daemon.jsonlog import setup_logging
from avindex.daemon.settings import (
    Settings,
    SettingsError,
    load_settings,
    reference_markdown,
)

BASE = {"AVINDEX_MODEL_DIR": "/models/m", "AVINDEX_QDRANT_PATH": "/var/lib/avindex/qdrant"}


def test_defaults_file_then_environment_win(tmp_path):
    cfg = tmp_path / "avindex.yaml"
    cfg.write_text("kafka:\n  topics: [a, b]\n  max_in_flight: 10\n"
                   "qdrant:\n  url: http://qdrant:6333\nmodel:\n  dir: /from/file\n")
    env = {"AVINDEX_KAFKA_MAX_IN_FLIGHT": "20", "AVINDEX_MEDIA_ALLOWED_ROOTS": "/a, /b",
           "AVINDEX_MODEL_FP16": "yes"}
    s, warnings = load_settings(cfg, env)
    assert s.kafka.topics == ["a", "b"]  # from the file
    assert s.kafka.max_in_flight == 20  # the environment wins
    assert s.media.allowed_roots == ["/a", "/b"]
    assert s.model.fp16 is True and s.model.dir == "/from/file"
    assert s.kafka.group_id == "avindex"  # default
    assert warnings == []


def test_toml_and_config_path_from_environment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\ndir = "/m"\n[qdrant]\npath = "/q"\n[pipeline]\nretry_max_s = 5\n')
    s, _ = load_settings(None, {"AVINDEX_CONFIG": str(cfg)})
    assert s.qdrant.path == "/q" and s.pipeline.retry_max_s == 5.0


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  topicz: [a]\n")
    with pytest.raises(SettingsError, match=r"kafka.topicz.*did you mean 'topics'"):
        load_settings(cfg, BASE)
    with pytest.raises(SettingsError, match=r"AVINDEX_KAFKA_MAX_IN_FLIGHT.*invalid literal"):
        load_settings(None, {**BASE, "AVINDEX_KAFKA_MAX_IN_FLIGHT": "many"})
    with pytest.raises(SettingsError, match=r"exactly one of qdrant\.url"):
        load_settings(None, {**BASE, "AVINDEX_QDRANT_URL": "http://q:6333"})
    with pytest.raises(SettingsError, match=r"model\.dir is required"):
        load_settings(None, {"AVINDEX_QDRANT_PATH": "/q"})


def test_payload_indexes_and_tombstones(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("qdrant:\n  payload_indexes:\n    metadata.language: keyword\n"
                   "    metadata.recorded_at: datetime\n")
    s, _ = load_settings(cfg, BASE)
    assert s.qdrant.payload_indexes == {"metadata.language": "keyword",
                                        "metadata.recorded_at": "datetime"}
    assert s.kafka.tombstones == "delete"  # the default
    for raw in ('{"metadata.n": "integer"}', "metadata.n=integer"):
        s, _ = load_settings(None, {**BASE, "AVINDEX_QDRANT_PAYLOAD_INDEXES": raw})
        assert s.qdrant.payload_indexes == {"metadata.n": "integer"}
    with pytest.raises(SettingsError, match=r"payload_indexes\['metadata.n'\] must be one of"):
        load_settings(None, {**BASE, "AVINDEX_QDRANT_PAYLOAD_INDEXES": "metadata.n=number"})
    with pytest.raises(SettingsError, match=r"kafka.tombstones must be delete or dead_letter"):
        load_settings(None, {**BASE, "AVINDEX_KAFKA_TOMBSTONES": "ignore"})
    s, _ = load_settings(None, {**BASE, "AVINDEX_KAFKA_TOMBSTONES": "dead_letter"})
    assert s.kafka.tombstones == "dead_letter"


def test_unknown_prefixed_variables_warn_instead_of_failing():
    # Kubernetes injects AVINDEX_PORT=tcp://... for a service called "avindex".
    _, warnings = load_settings(None, {**BASE, "AVINDEX_PORT": "tcp://10.0.0.1:8080",
                                       "AVINDEX_KAFKA_TOPIC": "x"})
    assert len(warnings) == 2
    assert any("AVINDEX_KAFKA_TOPIC" in w and "AVINDEX_KAFKA_TOPICS" in w for w in warnings)


def test_secrets_from_environment_or_file_are_masked(tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    s, _ = load_settings(None, {**BASE, "AVINDEX_QDRANT_API_KEY_FILE": str(key_file),
                                "AVINDEX_KAFKA_SASL_PASSWORD": "env-secret"})
    assert s.qdrant.api_key == "file-secret" and s.kafka.sasl_password == "env-secret"
    shown = json.dumps(s.redacted()) + repr(s)
    assert "file-secret" not in shown and "env-secret" not in shown
    assert s.redacted()["qdrant"]["api_key"] == "***"
    setup_logging("INFO", "json")
    logging.getLogger("t").info("settings", extra={"fields": {"settings": s.redacted()}})
    err = capsys.readouterr().err
    assert "file-secret" not in err and "env-secret" not in err
    line = json.loads(err.strip().splitlines()[-1])
    assert line["message"] == "settings" and line["settings"]["kafka"]["sasl_password"] == "***"


def test_reference_table_lists_every_field_and_docs_are_current():
    table = reference_markdown()
    s = Settings()
    for section in ("model", "kafka", "media", "qdrant", "pipeline", "http", "log"):
        for name in vars(getattr(s, section)):
            assert f"`AVINDEX_{section.upper()}_{name.upper()}`" in table
    doc = Path(__file__).resolve().parents[2] / "docs" / "daemon.md"
    assert table in doc.read_text(), "docs/daemon.md is stale: paste reference_markdown()"


def test_api_keys_from_the_environment_and_a_file_masked_when_logged(tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text("# issued 2026-12\nfile-key-0123456789abc\n\nfile-key-2-0123456789\n")
    env = {**BASE, "AVINDEX_HTTP_API_KEYS": "env-key-0123456789abcd,env-key-2-0123456789",
           "AVINDEX_HTTP_API_KEYS_FILE": str(keys)}
    s, _ = load_settings(None, env)
    assert s.http.api_keys == ["env-key-0123456789abcd", "env-key-2-0123456789",
                               "file-key-0123456789abc", "file-key-2-0123456789"]
    assert s.redacted()["http"]["api_keys"] == "***" and "env-key" not in repr(s)
    assert load_settings(None, BASE)[0].redacted()["http"]["api_keys"] == []
    with pytest.raises(SettingsError, match=r"http\.api_keys"):
        load_settings(None, {**BASE, "AVINDEX_HTTP_API_KEYS": "short"})
    with pytest.raises(SettingsError, match="api_keys_file"):
        load_settings(None, {**BASE, "AVINDEX_HTTP_API_KEYS_FILE": str(tmp_path / "none")})
