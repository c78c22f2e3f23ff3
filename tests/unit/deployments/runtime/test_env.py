"""What a job process may see of its worker's environment."""

from __future__ import annotations

from deployments.runtime.env import engine_environment, scrub_environment, scrub_own_environment

WORKER = {
    "OPENAI_API_KEY": "sk-worker",
    "ANTHROPIC_API_KEY": "sk-ant",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "DATABASE_URL": "postgresql://secret",
    "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    "PREFECT__FLOW_RUN_ID": "0f0e",
    "DSPY_SERVICE_HOME": "/srv/dspy",
    "PATH": "/usr/bin",
    "LC_ALL": "C.UTF-8",
    "CORP_PROXY_HOST": "proxy",
    "CORPORATE": "no",
    "MY_TOKEN": "mine",
}


def test_provider_keys_and_other_worker_secrets_are_dropped():
    env = scrub_environment(WORKER)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL", "MY_TOKEN"):
        assert name not in env


def test_prefect_service_and_system_variables_are_kept():
    env = scrub_environment(WORKER)
    assert env["PREFECT_API_URL"] == WORKER["PREFECT_API_URL"]
    assert env["PREFECT__FLOW_RUN_ID"] == "0f0e"
    assert env["DSPY_SERVICE_HOME"] == "/srv/dspy"
    assert env["PATH"] == "/usr/bin" and env["LC_ALL"] == "C.UTF-8"


def test_passthrough_adds_exact_names_and_prefix_patterns():
    env = scrub_environment(WORKER, " MY_TOKEN , CORP_*,")
    assert env["MY_TOKEN"] == "mine" and env["CORP_PROXY_HOST"] == "proxy"
    assert "CORPORATE" not in env and "OPENAI_API_KEY" not in env


def test_the_passthrough_list_travels_in_the_environment_itself():
    env = scrub_own_environment({**WORKER, "DSPY_SERVICE_JOB_ENV_PASSTHROUGH": "MY_TOKEN"})
    assert env["MY_TOKEN"] == "mine" and "OPENAI_API_KEY" not in env


def test_the_engine_does_not_see_the_zygote_socket_and_gets_few_malloc_arenas():
    env = engine_environment({**WORKER, "DSPY_SERVICE_ZYGOTE_SOCKET": "/tmp/z.sock"})
    assert "DSPY_SERVICE_ZYGOTE_SOCKET" not in env and env["DSPY_SERVICE_HOME"] == "/srv/dspy"
    assert env["MALLOC_ARENA_MAX"] == "4"
    assert "OPENAI_API_KEY" not in env


def test_an_operator_malloc_setting_passed_through_is_kept():
    env = engine_environment({**WORKER, "MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX")
    assert env["MALLOC_ARENA_MAX"] == "2"


def test_the_engine_always_gets_unbuffered_output_and_the_local_litellm_cost_map():
    # The pool's template gives a job no environment of its own: these come from here.
    env = engine_environment({**WORKER, "LITELLM_LOCAL_MODEL_COST_MAP": "False"})
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True" and env["PYTHONUNBUFFERED"] == "1"
