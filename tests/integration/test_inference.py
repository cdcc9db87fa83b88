"""Private inference through the real service (PostgreSQL, Redis, a Celery worker, an inference worker,
the gateway): a fine-tuned model answers from the device that trained it, sessions belong to their
organization, a lost session is rebuilt without the user noticing, and the gateway never takes text."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import toy_dataset, toy_pairs
from tests.integration.conftest import TINY_LM, TINY_MODEL

TEXTS = [text for text, _ in toy_dataset(24, seed=5)]


@pytest.fixture(scope="module")
def classifier(service):
    from client_sdk import FineTuneJob, PrivacyConfig

    job = FineTuneJob.create(
        toy_dataset(64),
        model=TINY_MODEL,
        split_layer=2,
        max_length=16,
        privacy=PrivacyConfig(mechanism="none", seed=0),
        client=service.client(),
        hyperparameters={"batch_size": 8, "n_epochs": 3, "learning_rate": 5e-3},
        progress=False,
    )
    assert job.status == "succeeded", service.worker_log()
    return job


def test_a_fine_tuned_classifier_predicts_privately(service, classifier):
    from client_sdk import FineTunedModel

    model = classifier.load_model()
    labels = model.predict(TEXTS)
    assert len(labels) == len(TEXTS) and set(labels) <= {"neg", "pos"}
    truth = [label for _, label in toy_dataset(24, seed=5)]
    accuracy = sum(a == b for a, b in zip(labels, truth, strict=True)) / len(truth)
    assert accuracy == pytest.approx(classifier.metrics["accuracy_after"], abs=0.35)  # same model, other texts
    again = FineTunedModel(classifier.fine_tuned_model, client=service.client())  # a new process would do this
    assert again.predict(TEXTS) == labels  # mechanism none: the same states, the same answers
    listed = [m.id for m in service.client().models.list()]
    assert classifier.fine_tuned_model in listed


def test_a_lost_session_is_reopened_without_the_user_noticing(service, classifier):
    import redis

    from service.inference import session_key

    model = classifier.load_model()
    first = model.predict(TEXTS[:4])
    old = model._session["id"]
    redis.Redis.from_url(service.redis_url).delete(session_key(old))  # expired, or lost with its worker
    assert model.predict(TEXTS[:4]) == first
    assert model._session["id"] != old
    service.kill_inference_worker()  # the worker dies: its sessions are gone
    service.start_inference_worker()
    assert model.predict(TEXTS[:4]) == first


def test_models_and_sessions_belong_to_their_organization(service, classifier):
    from client_sdk import FineTunedModel
    from client_sdk.errors import NotFoundError
    from client_sdk.inference import InferenceOptionError

    with pytest.raises(NotFoundError):
        FineTunedModel(classifier.fine_tuned_model, client=service.client(service.other_key))
    with pytest.raises(NotFoundError):
        FineTunedModel(classifier.fine_tuned_model + "x", client=service.client())
    model = classifier.load_model()
    model.predict(TEXTS[:1])
    headers = {"Authorization": f"Bearer {service.other_key}", "Content-Type": "application/octet-stream"}
    url = f"{service.base_url}/privtune/inference/sessions/{model._session['id']}/forward"
    response = httpx.post(url, content=b"x", headers=headers)
    assert response.status_code == 404 and response.json()["error"]["param"] == "session"
    opened = httpx.post(
        f"{service.base_url}/privtune/inference/sessions",
        json={"model": classifier.fine_tuned_model},
        headers={"Authorization": f"Bearer {service.other_key}"},
    )
    assert opened.status_code == 404 and opened.json()["error"]["code"] == "model_not_found"
    with pytest.raises(InferenceOptionError) as info:
        model.generate("w1 w2", max_new_tokens=4)
    assert info.value.param == "model"


def test_the_gateway_refuses_text(service):
    import openai

    client = openai.OpenAI(base_url=service.base_url, api_key=service.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hello"}])
    assert info.value.code == "text_not_accepted" and "privtune proxy" in info.value.message


@pytest.fixture(scope="module")
def generator_job(service):
    from client_sdk import FineTuneJob, PrivacyConfig

    job = FineTuneJob.create(
        toy_pairs(40),
        model=TINY_LM,
        task="generation",
        split_layer=1,
        tail_layers=1,
        max_length=24,
        privacy=PrivacyConfig(mechanism="none", seed=0),
        client=service.client(),
        hyperparameters={"batch_size": 8, "n_epochs": 2, "learning_rate": 5e-3},
        progress=False,
    )
    assert job.status == "succeeded", service.worker_log()
    return job


def test_a_generation_job_trains_end_to_end_and_generates(service, generator_job):
    job = generator_job
    spec = job.method.privtune
    assert (spec["task"], spec["tail_layers"], spec["num_labels"]) == ("generation", 1, None)
    events = job.events()
    assert any(e.type == "metrics" and "valid_mean_token_accuracy" in e.data for e in events)
    assert job.metrics["validation_after"]["valid_loss"] < job.metrics["validation_before"]["valid_loss"]
    model = job.load_model()
    chat = [{"role": "user", "content": "w3 w4 w5"}]
    text = model.generate(chat, max_new_tokens=4, temperature=0)
    assert isinstance(text, str) and model.last_usage["completion_tokens"] <= 4
    assert "".join(model.generate(chat, max_new_tokens=4, temperature=0, stream=True)) == text
    assert model.generate("w3 w4 w5", max_new_tokens=3, temperature=0) == model.generate(
        "w3 w4 w5", max_new_tokens=3, temperature=0
    )  # greedy and mechanism none: deterministic


def test_generation_options_are_checked(service, generator_job):
    from client_sdk.generation_data import PromptTooLongError
    from client_sdk.inference import InferenceOptionError

    model = generator_job.load_model()
    for options, param in [({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0}, "top_p")]:
        with pytest.raises(InferenceOptionError) as info:
            model.generate("w1", **options)
        assert info.value.param == param
    with pytest.raises(InferenceOptionError) as info:
        model.predict(["w1"])
    assert info.value.param == "model"
    with pytest.raises(PromptTooLongError):
        model.generate(" ".join(["w1"] * 3000), max_new_tokens=4)


def test_the_official_openai_client_uses_the_private_model_through_the_local_proxy(service, generator_job):
    import openai

    from tests.test_proxy import Served

    model = generator_job.load_model()
    proxy = Served(model)  # `privtune proxy --model ft:...`: loopback, uvicorn, the real FineTunedModel
    try:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "w3 w4 w5"}]
        chat = client.chat.completions.create(model=model.id, messages=messages, max_tokens=4, temperature=0)
        expected = model.generate(messages, max_new_tokens=4, temperature=0)
        assert chat.choices[0].message.content == expected and chat.choices[0].message.role == "assistant"
        assert chat.usage.completion_tokens <= 4
        chunks = client.chat.completions.create(
            model=model.id, messages=messages, max_tokens=4, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        text = client.completions.create(model=model.id, prompt="w3 w4 w5", max_tokens=3, temperature=0)
        assert text.choices[0].text == model.generate("w3 w4 w5", max_new_tokens=3, temperature=0)
        assert [m.id for m in client.models.list()] == [model.id]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model.id, messages=messages, max_tokens=100000)
        assert info.value.param == "max_tokens"
    finally:
        proxy.stop()
