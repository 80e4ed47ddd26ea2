"""Settings from the environment: provider choice, URL shapes, and errors that name the variable."""

from __future__ import annotations

import pytest

from acs_trio.config import AgentSettings, Settings
from acs_trio.errors import ConfigError


def test_defaults_use_the_local_peer() -> None:
    settings = Settings.from_env({})
    assert settings.model is None
    assert settings.acs is None
    assert settings.limits.playout_lead_ms == 100


def test_azure_openai_ga_endpoint_and_api_key_header() -> None:
    settings = Settings.from_env(
        {
            "AZURE_OPENAI_ENDPOINT": "https://myres.openai.azure.com/",
            "AZURE_OPENAI_API_KEY": "k",
            "AZURE_OPENAI_DEPLOYMENT": "gpt-realtime",
        }
    )
    assert settings.model is not None
    assert (
        settings.model.url == "wss://myres.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    )
    assert settings.model.headers == (("api-key", "k"),)
    assert "api-version" not in settings.model.url
    assert "k" not in repr(settings.model)
    assert settings.agent.model == "gpt-realtime"


def test_openai_endpoint_and_bearer() -> None:
    model = Settings.from_env(
        {"OPENAI_API_KEY": "sk", "OPENAI_REALTIME_MODEL": "gpt-realtime-mini"}
    ).model
    assert model is not None
    assert model.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini"
    assert model.headers == (("Authorization", "Bearer sk"),)


def test_explicit_url_wins() -> None:
    model = Settings.from_env(
        {"REALTIME_URL": "ws://127.0.0.1:9/v1/realtime", "OPENAI_API_KEY": "sk"}
    ).model
    assert model is not None and model.provider == "explicit URL" and model.headers == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REALTIME_URL": "http://x"}, "REALTIME_URL"),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://x", "AZURE_OPENAI_DEPLOYMENT": "d"},
            "AZURE_OPENAI_API_KEY",
        ),
        (
            {"AZURE_OPENAI_ENDPOINT": "https://x", "AZURE_OPENAI_API_KEY": "k"},
            "AZURE_OPENAI_DEPLOYMENT",
        ),
        ({"AGENT_VOICE": "robot"}, "AGENT_VOICE"),
        ({"VAD_THRESHOLD": "2"}, "VAD_THRESHOLD"),
        ({"CALL_IDLE_TIMEOUT_S": "-1"}, "CALL_IDLE_TIMEOUT_S"),
        ({"APPEND_BATCH_MS": "50"}, "APPEND_BATCH_MS"),
        ({"OUTBOUND_FRAME_MS": "30"}, "OUTBOUND_FRAME_MS"),
        ({"OUTBOUND_FRAME_MS": "200"}, "OUTBOUND_FRAME_MS"),
        ({"PORT": "70000"}, "PORT"),
        ({"OVERFLOW_TARGET": "4255550100"}, "OVERFLOW_TARGET"),  # no "+": every redirect fails
        ({"ACS_CONNECTION_STRING": "endpoint=https://a/;accesskey=b"}, "PUBLIC_BASE_URL"),
        (
            {
                "ACS_CONNECTION_STRING": "nope",
                "PUBLIC_BASE_URL": "https://h",
                "ACS_RESOURCE_ID": "r",
            },
            "ACS_CONNECTION_STRING",
        ),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_acs_settings() -> None:
    acs = Settings.from_env(
        {
            "ACS_CONNECTION_STRING": "endpoint=https://res.communication.azure.com/;accesskey=c2VjcmV0",
            "PUBLIC_BASE_URL": "https://bot.example.com/",
            "ACS_RESOURCE_ID": "6b0c6a0e-0000-4000-8000-000000000000",
        }
    ).require_acs()
    assert acs.public_base_url == "https://bot.example.com"
    assert acs.jwt_issuer == "https://acscallautomation.communication.azure.com"
    assert "c2VjcmV0" not in repr(acs)


def test_a_plain_http_azure_endpoint_means_a_plain_ws_socket() -> None:
    model = Settings.from_env(
        {
            "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9000",
            "AZURE_OPENAI_API_KEY": "k",
            "AZURE_OPENAI_DEPLOYMENT": "d",
        }
    ).model
    assert model is not None
    assert model.url == "ws://127.0.0.1:9000/openai/v1/realtime?model=d"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"REALTIME_URL": "ws://model.example/v1/realtime", "REALTIME_API_KEY": "k"},
            "REALTIME_URL",
        ),
        (
            {
                "AZURE_OPENAI_ENDPOINT": "http://myres.openai.azure.com",
                "AZURE_OPENAI_API_KEY": "k",
                "AZURE_OPENAI_DEPLOYMENT": "d",
            },
            "AZURE_OPENAI_ENDPOINT",
        ),
        (
            {
                "ACS_CONNECTION_STRING": "endpoint=https://a/;accesskey=QUJDRA==",
                "PUBLIC_BASE_URL": "http://bot.example.com",
                "ACS_RESOURCE_ID": "6b0c6a0e-0000-4000-8000-000000000000",
            },
            "PUBLIC_BASE_URL",
        ),
        (
            {
                "ACS_CONNECTION_STRING": "endpoint=https://a/;accesskey=QUJDRA==",
                "PUBLIC_BASE_URL": "https://bot.example.com",
                "ACS_RESOURCE_ID": "6b0c6a0e-0000-4000-8000-000000000000",
                "ACS_JWKS_URL": "http://acs.example/calling/keys",  # keys on the path: forgeable
            },
            "ACS_JWKS_URL",
        ),
    ],
)
def test_credentials_over_cleartext_are_refused_except_to_loopback(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)
    loopback = {k: v.replace("model.example", "127.0.0.1").replace("bot.example.com", "localhost")
                .replace("myres.openai.azure.com", "[::1]").replace("acs.example", "127.0.0.1")
                for k, v in env.items()}  # fmt: skip
    Settings.from_env(loopback)  # tests and demos on this machine


def test_config_errors_and_reprs_never_show_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REALTIME_URL": "http://h/realtime?api-key=SUPERSECRET"})
    assert "SUPERSECRET" not in str(caught.value)
    assert "REALTIME_URL" in str(caught.value)
    model = Settings.from_env({"REALTIME_URL": "wss://h/realtime?api-key=SUPERSECRET"}).model
    assert "SUPERSECRET" not in repr(model)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"INCOMING_CALL_SECRET": "SUPERSECRET", "ANSWER_BURST": "x"})
    assert "SUPERSECRET" not in str(caught.value)
    settings = Settings.from_env({"INCOMING_CALL_SECRET": "SUPERSECRET-0123456789"})
    assert "SUPERSECRET" not in repr(settings)


def test_incoming_call_secret_is_required_and_long_enough() -> None:
    for env in ({}, {"INCOMING_CALL_SECRET": "short"}):
        with pytest.raises(ConfigError, match="INCOMING_CALL_SECRET"):
            Settings.from_env(env).require_incoming_call_secret()
    secret = "x" * 32
    assert (
        Settings.from_env({"INCOMING_CALL_SECRET": secret}).require_incoming_call_secret() == secret
    )


def test_default_capacity_is_what_one_process_carries() -> None:
    # docs/performance.md: 40 calls per process at p99 < 5 ms; underruns from 75.
    assert Settings.from_env({}).server.max_concurrent_calls == 40


def test_default_model_is_current_and_shutdown_names_are_warned() -> None:
    from acs_trio.config import (
        DEFAULT_REALTIME_MODEL,
        REALTIME_MODEL_SHUTDOWNS,
        model_shutdown_warning,
    )

    assert DEFAULT_REALTIME_MODEL not in REALTIME_MODEL_SHUTDOWNS
    assert Settings.from_env({}).agent.model == DEFAULT_REALTIME_MODEL
    assert model_shutdown_warning(DEFAULT_REALTIME_MODEL) is None
    warning = model_shutdown_warning("gpt-realtime")
    assert warning is not None and "2027-01-20" in warning and "gpt-realtime-2.1" in warning


def test_model_session_limits_from_the_environment() -> None:
    limits = Settings.from_env(
        {
            "MODEL_RECONNECT_BUDGET_S": "4",
            "MODEL_PING_INTERVAL_S": "15",
            "MODEL_GAP_AUDIO_MS": "1000",
            "MAX_FAILED_RESPONSES": "5",
        }
    ).limits
    assert (
        limits.model_reconnect_budget_s,
        limits.model_ping_interval_s,
        limits.model_gap_audio_ms,
        limits.max_failed_responses,
    ) == (4, 15, 1000, 5)
    with pytest.raises(ConfigError, match="MAX_FAILED_RESPONSES"):
        Settings.from_env({"MAX_FAILED_RESPONSES": "0"})


def test_transcription_models_with_a_shutdown_date_are_warned() -> None:
    # openai SDK 3.63.0, types/realtime/audio_transcription.py: "Deprecated values: whisper-1,
    # gpt-4o-mini-transcribe, …, gpt-4o-transcribe, gpt-4o-transcribe-diarize: Announced
    # shutdown date: 2027-02-26".
    from acs_trio.config import transcription_shutdown_warning

    default = AgentSettings().transcription_model
    warning = transcription_shutdown_warning(default)
    assert warning is not None and "2027-02-26" in warning
    assert "INPUT_TRANSCRIPTION_MODEL" in warning
    assert transcription_shutdown_warning("gpt-transcribe") is None
    assert transcription_shutdown_warning("") is None  # transcription disabled


def test_no_redis_url_means_one_process() -> None:
    cluster = Settings.from_env({}).cluster
    assert cluster.redis_url is None
    assert cluster.max_calls is None


def test_redis_settings_and_their_errors() -> None:
    cluster = Settings.from_env(
        {
            "REDIS_URL": "rediss://:secret@cache.example:6380/0",
            "INSTANCE_ID": "pod-a",
            "CALL_LEASE_S": "5",
            "CLUSTER_MAX_CONCURRENT_CALLS": "300",
        }
    ).cluster
    assert cluster.redis_url == "rediss://:secret@cache.example:6380/0"
    assert (cluster.instance_id, cluster.lease_s, cluster.max_calls) == ("pod-a", 5.0, 300)
    assert "secret" not in repr(cluster)
    with pytest.raises(ConfigError, match="REDIS_URL="):
        Settings.from_env({"REDIS_URL": "http://cache:6379"})
    with pytest.raises(ConfigError, match="CALL_LEASE_S="):
        Settings.from_env({"REDIS_URL": "redis://cache", "CALL_LEASE_S": "0"})
