"""The egress policy: the allow-list setting, which addresses are denied, and a job's hosts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dspy_service.egress_policy import EgressPolicy, job_hosts, url_target
from dspy_service.schemas import JobRequest
from dspy_service.settings import ServiceSettings
from tests.support.payloads import job_payload, model_config

OPEN = EgressPolicy()


@pytest.mark.parametrize(
    "address, kind",
    [
        ("169.254.169.254", "always denied"),
        ("169.254.170.2", "always denied"),
        ("fe80::1", "always denied"),
        ("100.100.100.200", "always denied"),
        ("fd00:ec2::254", "always denied"),
        ("::ffff:169.254.169.254", "always denied"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "always denied"),  # NAT64 of 169.254.169.254
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.5", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("100.64.1.1", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),  # reserved; Python counts it private
        ("::ffff:127.0.0.1", "loopback"),
    ],
)
def test_non_public_addresses_are_denied_by_default(address, kind):
    problem = OPEN.address_problem("target", 80, address)
    assert problem is not None and kind in problem


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111"])
def test_public_addresses_pass(address):
    assert OPEN.address_problem("target", 443, address) is None


def test_the_allow_list_opens_ranges_and_exact_targets_but_never_metadata():
    policy = EgressPolicy.parse(" 127.0.0.1:8765 , 10.0.0.0/8,llm.internal,[::1]:9000, LOCALHOST:7000 ")
    assert policy.address_problem("127.0.0.1", 8765, "127.0.0.1") is None
    assert "loopback" in policy.address_problem("127.0.0.1", 4200, "127.0.0.1")  # another port
    assert policy.address_problem("10.9.8.7", 1234, "10.9.8.7") is None
    assert "private" in policy.address_problem("192.168.0.2", 80, "192.168.0.2")
    assert policy.address_problem("llm.internal", 443, "172.16.0.9") is None  # the name is allowed, any address
    assert policy.address_problem("localhost.", 7000, "127.0.0.1") is None  # names compare case- and dot-blind
    assert "private" in policy.address_problem("other.internal", 443, "172.16.0.9")
    assert policy.address_problem("::1", 9000, "::1") is None
    everything = EgressPolicy.parse("0.0.0.0/0,::/0,llm.internal")
    assert "always denied" in everything.address_problem("llm.internal", 80, "169.254.169.254")
    assert "always denied" in everything.address_problem("x", 80, "fe80::1")


@pytest.mark.parametrize("entry", ["bad entry", "host:99999", "10.0.0.0/33", "a..b", "-x.example", "http://x/"])
def test_a_bad_entry_is_a_settings_error_naming_it(entry):
    with pytest.raises(ValidationError) as info:
        ServiceSettings(egress_allow=f"127.0.0.1:8765,{entry}")
    assert repr(entry) in str(info.value)


def test_allow_listing_metadata_is_refused():
    with pytest.raises(ValidationError, match="always denied"):
        ServiceSettings(egress_allow="169.254.169.254")
    assert ServiceSettings(egress_allow="").egress_policy.entries == ()


def test_addresses_problem_checks_every_address():
    policy = EgressPolicy.parse("127.0.0.1:80")
    assert policy.addresses_problem("name", 80, ["127.0.0.1"]) is None
    assert "private" in policy.addresses_problem("name", 80, ["127.0.0.1", "10.0.0.1"])
    assert "does not resolve" in policy.addresses_problem("name", 80, [])


def test_url_problem_resolves_names_and_lets_unresolvable_ones_pass():
    assert "loopback" in OPEN.url_problem("http://localhost:4200/api/flow_runs/x")
    assert "loopback" in OPEN.url_problem("http://2130706433:4200/")  # 127.0.0.1 as one number
    assert "always denied" in OPEN.url_problem("http://[::ffff:169.254.169.254]/latest/meta-data")
    assert OPEN.url_problem("https://8.8.8.8/v1") is None
    assert OPEN.url_problem("https://no-such-host.invalid/v1") is None  # the proxy decides later
    assert "not an http(s) URL" in OPEN.url_problem("ftp://example.com/x")


def test_url_target():
    assert url_target("https://API.openai.com/v1") == ("api.openai.com", 443)
    assert url_target("http://u:p@[::1]:8080/x") == ("::1", 8080)
    assert url_target("localhost:8000/v1") == ("localhost", 8000)  # no scheme: as http
    assert url_target("file:///etc/passwd") is None and url_target("http://x:99999/") is None


def spec(**overrides):
    return JobRequest.model_validate(job_payload("http://127.0.0.1:8765/v1", **overrides)).spec()


def test_a_jobs_hosts_are_its_base_urls_providers_and_dataset():
    job = spec(
        reflection_model_config={"name": "anthropic/claude"},
        prompt_model_config=model_config("https://llm.internal:8443/v1"),
        dataset=None,
        dataset_source="https://data.example.org/rows.csv",
    )
    hosts = job_hosts(job)
    assert hosts.targets == {
        ("127.0.0.1", 8765),
        ("api.anthropic.com", 443),
        ("llm.internal", 8443),
        ("data.example.org", 443),
    }
    assert hosts.target_problem("LLM.internal", 8443) is None
    assert "not one of this job's hosts" in hosts.target_problem("127.0.0.1", 4200)
    assert "not one of this job's hosts" in hosts.target_problem("api.openai.com", 443)


def test_a_model_of_an_unknown_provider_without_base_url_is_unreachable_and_says_so():
    hosts = job_hosts(spec(model_config={"name": "someprovider/model"}, dataset=None, dataset_source="/data/x.csv"))
    assert hosts.targets == frozenset()
    problem = hosts.target_problem("api.someprovider.com", 443)
    assert "model_config: no known API host for model 'someprovider/model'; set its base_url" in problem
