"""``client_sdk.options``: what a data owner chooses (PrivacyConfig, Hyperparameters) and how it becomes
the job contract (``job_spec``), with every refusal naming the option the user passed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from client_sdk.jobspec import JobSpecError, PrivtuneMethod
from client_sdk.options import Hyperparameters, PrivacyConfig, job_spec
from client_sdk.privacy.errors import PrivacyConfigError, UnknownMechanismError
from client_sdk.privacy.table import ETA_MECHANISMS, MECHANISMS, config_from_dict, get_config


def spec(hp: Hyperparameters | None = None, privacy: PrivacyConfig | None = None, **kw) -> PrivtuneMethod:
    options = {"num_labels": 2, "split_layer": 3, "max_length": 64, "total_steps": 10, **kw}
    hp = (hp or Hyperparameters()).resolved(100, "classification")
    return job_spec(hp, privacy or PrivacyConfig(mechanism="none"), **options)


# ---- Hyperparameters.coerce ----------------------------------------------------------------------


def test_coerce_none_gives_the_defaults():
    assert Hyperparameters.coerce(None) == Hyperparameters()


def test_coerce_keeps_an_instance():
    hp = Hyperparameters(batch_size=8)
    assert Hyperparameters.coerce(hp) is hp


def test_coerce_reads_a_dict():
    hp = Hyperparameters.coerce({"batch_size": 8, "n_epochs": 2, "learning_rate": 1e-3})
    assert (hp.batch_size, hp.n_epochs, hp.learning_rate) == (8, 2, 1e-3)
    assert hp.lora_r == Hyperparameters().lora_r  # the rest keep their defaults


@pytest.mark.parametrize("value", [["batch_size", 8], 8, "batch_size=8"])
def test_coerce_refuses_another_type(value):
    with pytest.raises(JobSpecError) as info:
        Hyperparameters.coerce(value)
    assert info.value.param == "hyperparameters"
    assert type(value).__name__ in str(info.value)


def test_coerce_refuses_an_unknown_key_listing_the_valid_ones():
    with pytest.raises(JobSpecError) as info:
        Hyperparameters.coerce({"batch_size": 8, "epochs": 2})
    assert info.value.param == "hyperparameters.epochs"
    for f in dataclasses.fields(Hyperparameters):
        assert f.name in info.value.message
    assert "did you mean 'n_epochs'" in info.value.message


@pytest.mark.parametrize(("key", "value"), [("batch_size", "8"), ("batch_size", None), ("n_epochs", "2")])
def test_a_hyperparameter_of_the_wrong_type_is_refused_or_made_right(key, value):
    """Values read from JSON or a command line are often strings; the step count is computed from them."""
    try:
        hp = Hyperparameters.coerce({key: value})
    except JobSpecError as exc:
        assert exc.param == f"hyperparameters.{key}"
        return
    assert type(getattr(hp, key)) is int, f"{key}={getattr(hp, key)!r} kept as {type(getattr(hp, key)).__name__}"


def test_hyperparameters_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Hyperparameters().batch_size = 1  # type: ignore[misc]


# ---- job_spec ------------------------------------------------------------------------------------


def test_job_spec_maps_every_hyperparameter_into_the_contract():
    hp = Hyperparameters(
        batch_size=16,
        n_epochs=4,
        learning_rate=2e-4,
        lora_r=4,
        lora_alpha=32,
        lora_dropout=0.1,
        warmup_steps=7,
        weight_decay=0.01,
    )
    method = spec(hp, num_labels=3, split_layer=2, max_length=128, total_steps=40)
    assert isinstance(method, PrivtuneMethod)
    assert (method.task, method.num_labels, method.split_layer, method.max_tokens) == ("classification", 3, 2, 128)
    assert (method.batch_size, method.n_epochs, method.total_steps) == (16, 4, 40)
    assert (method.lora.r, method.lora.alpha, method.lora.dropout) == (4, 32, 0.1)
    opt = method.optimizer
    assert (opt.learning_rate, opt.weight_decay, opt.warmup_steps) == (2e-4, 0.01, 7)
    checked = {"batch_size", "n_epochs", "learning_rate", "lora_r", "lora_alpha", "lora_dropout"}
    checked |= {"warmup_steps", "weight_decay"}
    assert {f.name for f in dataclasses.fields(Hyperparameters)} == checked  # a new field needs a check above


def test_job_spec_declares_the_privacy_config_with_record_and_audit():
    privacy = PrivacyConfig(mechanism="dchi", eta=4.0)
    record, audit = {"sensitivity": 1.5}, {"target_asr": 0.1, "chosen_eta": 4.0}
    method = spec(privacy=privacy, record=record, audit=audit)
    assert method.privacy.mechanism == "dchi" and method.privacy.eta == 4.0
    assert method.privacy.config() == privacy.config()
    assert method.privacy.record == record and method.privacy.audit == audit
    dumped = spec(privacy=privacy).model_dump(mode="json")["privacy"]
    assert "record" not in dumped and "audit" not in dumped  # nothing recorded yet: nothing declared


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("learning_rate", 2.0, "hyperparameters.learning_rate"),
        ("batch_size", 0, "hyperparameters.batch_size"),
        ("n_epochs", 51, "hyperparameters.n_epochs"),
        ("lora_r", 0, "hyperparameters.lora_r"),
        ("lora_alpha", 0, "hyperparameters.lora_alpha"),
        ("lora_dropout", 0.9, "hyperparameters.lora_dropout"),
        ("warmup_steps", -1, "hyperparameters.warmup_steps"),
        ("weight_decay", 2.0, "hyperparameters.weight_decay"),
    ],
)
def test_a_refused_hyperparameter_is_named_as_the_user_wrote_it(field, value, param):
    with pytest.raises(JobSpecError) as info:
        spec(Hyperparameters(**{field: value}))
    assert info.value.param == param
    assert info.value.message.startswith(f"{param}:") and f"(got {value!r})" in info.value.message


@pytest.mark.parametrize(
    ("option", "value", "param"),
    [
        ("split_layer", 0, "split_layer"),
        ("max_length", 0, "max_length"),
        ("num_labels", 1, "num_labels"),
        ("total_steps", 0, "total_steps"),
    ],
)
def test_a_refused_job_option_is_named_as_the_user_wrote_it(option, value, param):
    with pytest.raises(JobSpecError) as info:
        spec(**{option: value})
    assert info.value.param == param
    assert f"(got {value!r})" in info.value.message


# ---- PrivacyConfig -------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_declared_round_trips_through_config_from_dict(mechanism):
    privacy = PrivacyConfig(mechanism=mechanism)
    declared = privacy.declared()
    assert declared["mechanism"] == mechanism
    assert config_from_dict(declared) == privacy.config() == get_config(mechanism)


def test_declared_carries_eta_and_params():
    privacy = PrivacyConfig(mechanism="dchi", eta=3.0, params={"metric": "l2"})
    declared = privacy.declared()
    assert declared["eta"] == 3.0 and declared["metric"] == "l2"
    assert config_from_dict(declared) == get_config("dchi", eta=3.0, metric="l2")


def test_the_default_is_the_privtune_mechanism():
    assert PrivacyConfig().declared()["mechanism"] == "privtune"


def test_an_unknown_mechanism_or_parameter_is_refused_at_construction():
    with pytest.raises(UnknownMechanismError) as info:
        PrivacyConfig(mechanism="laplace")
    assert set(info.value.known) == set(MECHANISMS)
    with pytest.raises(PrivacyConfigError) as info:
        PrivacyConfig(mechanism="dchi", eta=-1)
    assert info.value.parameter == "eta"
    with pytest.raises(PrivacyConfigError):
        PrivacyConfig(mechanism="gaussian", params={"no_such_param": 1})


@pytest.mark.parametrize("target", [0, 0.0, 1, 1.5, -0.1])
def test_target_asr_must_lie_strictly_between_zero_and_one(target):
    with pytest.raises(ValueError, match="target_asr"):
        PrivacyConfig(mechanism="privtune", target_asr=target)


@pytest.mark.parametrize("mechanism", sorted(set(MECHANISMS) - set(ETA_MECHANISMS)))
def test_target_asr_needs_a_mechanism_with_eta(mechanism):
    with pytest.raises(ValueError, match="eta"):
        PrivacyConfig(mechanism=mechanism, target_asr=0.1)


@pytest.mark.parametrize("mechanism", ETA_MECHANISMS)
def test_target_asr_is_accepted_for_eta_mechanisms(mechanism):
    assert PrivacyConfig(mechanism=mechanism, target_asr=0.1).target_asr == 0.1


def test_a_seed_makes_the_noise_generator_reproducible():
    seeded = PrivacyConfig(mechanism="none", seed=7)
    a, b = seeded.generator(), seeded.generator()
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    unseeded = PrivacyConfig(mechanism="none")
    assert unseeded.generator().initial_seed() != unseeded.generator().initial_seed()
