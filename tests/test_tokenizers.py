"""Pretrained (Hugging Face) tokenizers as the data's tokenizer, chat templates rendered as
`transformers` renders them, and tokenizers compared by content.

The three tokenizer directories are made here, offline: small byte-level BPEs with the special
tokens, post-processors, configuration files and chat templates of Llama 3 Instruct, Qwen2.5
Instruct and Gemma 3 (the templates as their tokenizer_config.json files hold them)."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from jaxdistill import config as config_lib
from jaxdistill import data
from jaxdistill.data import chat, lm_formats, text_tokenizers
from jaxdistill.data import text as data_text
from jaxdistill.errors import DistillError
from jaxdistill.models import pretrained

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content ="
    " '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] |"
    " trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{"
    " '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

QWEN2_5_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user"
    " query.\\n\\nYou are provided with function signatures within <tools></tools> XML"
    " tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name"
    " and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\":"
    " <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful"
    " assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or"
    " (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n'"
    " }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate"
    " user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n")

# Each family's special tokens, in id order from 0, and the text that ends an assistant turn.
SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>"],
    "qwen2.5": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gemma3": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
}
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen2.5": "<|im_end|>\n", "gemma3": "<end_of_turn>\n"}

SENTENCES = ["The capital of France is Paris, and the capital of Italy is Rome.",
             "You are a helpful assistant; answer briefly and well.",
             "Conversation roles must alternate between the user and the assistant."]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def _adding_bos(tokenizer: Tokenizer, bos: str) -> Tokenizer:
    """The post-processor of Llama 3 and Gemma: every encoding starts with `bos`."""
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return tokenizer


def _write_json(path, value) -> None:
    path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def directories(tmp_path_factory, byte_level_bpe) -> dict:
    def _byte_level_bpe(specials: list[str]) -> Tokenizer:
        return byte_level_bpe(SENTENCES, specials, 400)

    """Each family's tokenizer directory: Llama 3 as save_pretrained writes it, Qwen2.5 and
    Gemma 3 as their hub repositories hold them (the chat template in tokenizer_config.json;
    Gemma's special tokens in special_tokens_map.json)."""
    root = tmp_path_factory.mktemp("tokenizers")
    llama, qwen, gemma = (root / name for name in SPECIALS)
    PreTrainedTokenizerFast(
        tokenizer_object=_adding_bos(_byte_level_bpe(SPECIALS["llama3"]), "<|begin_of_text|>"),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE,
    ).save_pretrained(llama)
    _write_json(llama / "generation_config.json", {"bos_token_id": 0, "eos_token_id": [1, 4]})
    qwen.mkdir()
    _byte_level_bpe(SPECIALS["qwen2.5"]).save(str(qwen / "tokenizer.json"))
    _write_json(qwen / "tokenizer_config.json", {
        "add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": QWEN2_5_TEMPLATE,
        "tokenizer_class": "Qwen2Tokenizer"})
    gemma.mkdir()
    _adding_bos(_byte_level_bpe(SPECIALS["gemma3"]), "<bos>").save(str(gemma / "tokenizer.json"))
    _write_json(gemma / "special_tokens_map.json", {
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
    _write_json(gemma / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "chat_template": GEMMA3_TEMPLATE,
        "tokenizer_class": "GemmaTokenizer"})
    _write_json(gemma / "generation_config.json", {"eos_token_id": [1, 5]})
    return {"llama3": str(llama), "qwen2.5": str(qwen), "gemma3": str(gemma)}


@pytest.fixture
def docs_with(data_dir):
    """The docs corpus as packed LM rows of 64 tokens, tokenized with the given tokenizer."""

    def config(tokenizer: str):
        config = config_lib.base().data
        config.update({"name": "bundled_docs", "data_dir": data_dir, "tokenizer": tokenizer,
                       "max_length": 64, "format": "packed"})
        return config

    return config


def _load(directories, family: str) -> PreTrainedTokenizerFast:
    return pretrained.load_tokenizer(directories[family])


@pytest.mark.parametrize("family, pad, bos, eos, eos_ids", [
    ("llama3", "<|eot_id|>", "<|begin_of_text|>", "<|eot_id|>", ["<|eot_id|>", "<|end_of_text|>"]),
    ("qwen2.5", "<|endoftext|>", "<|im_end|>", "<|im_end|>", ["<|im_end|>"]),
    ("gemma3", "<pad>", "<bos>", "<eos>", ["<eos>", "<end_of_turn>"]),
])
def test_special_ids_come_from_the_directory_s_files(directories, family, pad, bos, eos,
                                                     eos_ids):
    """No pad token: eos pads. No bos: eos starts rows. generation_config.json adds eos ids."""
    tokenizer = _load(directories, family)
    ids = text_tokenizers.special_ids(tokenizer)
    assert ids == text_tokenizers.SpecialIds(
        pad=tokenizer.convert_tokens_to_ids(pad), bos=tokenizer.convert_tokens_to_ids(bos),
        eos=tokenizer.convert_tokens_to_ids(eos),
        eos_ids=tuple(tokenizer.convert_tokens_to_ids(eos_ids)))


def test_llama3_rows_start_with_one_bos_that_is_never_a_target(directories, docs_with):
    """Llama 3's post-processor adds <|begin_of_text|>; the rows must not add a second."""
    config = docs_with(directories["llama3"])
    tokenizer = _load(directories, "llama3")
    ids = data_text.special_ids(config)
    text = "The capital of France is Paris."
    body = lm_formats.bodies(data.tokenizer(config), [text], ids.eos)[0]
    assert [ids.bos, *body] == [*tokenizer(text)["input_ids"], ids.eos]  # as transformers reads
    size, read = data.reader(config, "validation")
    rows = read(np.arange(size))
    piece_starts = (rows["positions"] == 0) & (rows["segment_ids"] > 0)
    np.testing.assert_array_equal(rows["input_ids"] == ids.bos, piece_starts)
    assert not (rows["targets"] == ids.bos).any()
    padding = rows["segment_ids"] == 0
    assert padding.any() and np.all(rows["input_ids"][padding] == ids.pad)
    assert not rows["loss_mask"][padding].any()


def test_prompts_of_a_tokenizer_without_pad_are_padded_with_eos(directories, docs_with):
    config = docs_with(directories["llama3"])
    ids = data_text.special_ids(config)
    assert ids.pad == ids.eos
    body = lm_formats.bodies(data.tokenizer(config), ["A short document."], ids.eos)[0]
    rows = lm_formats.prompts([body], 24, 40, ids)
    assert (rows["prompt_mask"] == 0).any() and (rows["continuation_mask"] == 0).any()
    assert np.all(rows["prompt"][rows["prompt_mask"] == 0] == ids.pad)
    assert np.all(rows["continuation"][rows["continuation_mask"] == 0] == ids.pad)


EXPECTED = {
    ("llama3", True): (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("qwen2.5", False): (  # no system turn: Qwen's own system prompt
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful"
        " assistant.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"),
    ("gemma3", True): (  # no system role: it opens the first user turn
        "<bos><start_of_turn>user\nYou are terse.\n\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"),
}


@pytest.mark.parametrize("family, with_system", EXPECTED)
def test_templates_render_the_prompt_each_model_expects(directories, family, with_system):
    turns = CONVERSATION[:2] if with_system else CONVERSATION[1:2]
    rendered = chat.render(_load(directories, family), turns, add_generation_prompt=True)
    assert rendered == EXPECTED[family, with_system]


@pytest.mark.parametrize("family", SPECIALS)
@pytest.mark.parametrize("turns, add_generation_prompt", [
    (CONVERSATION, False), (CONVERSATION[1:], False), (CONVERSATION[:4], True),
    (CONVERSATION[1:4], True)])
def test_render_and_tokenize_equal_transformers(directories, family, turns,
                                                add_generation_prompt):
    tokenizer = _load(directories, family)
    expected = tokenizer.apply_chat_template(turns, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    assert chat.render(tokenizer, turns, add_generation_prompt) == expected
    ids, _ = chat.tokenize(tokenizer, turns, add_generation_prompt)
    assert ids == tokenizer.apply_chat_template(
        turns, add_generation_prompt=add_generation_prompt, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == (tokenizer.bos_token_id is not None)


def _marked(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The text of each run of marked tokens."""
    runs, run = [], []
    for token, marked in zip(ids + [None], mask + [0]):
        if marked:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs


@pytest.mark.parametrize("family", SPECIALS)
def test_the_assistant_mask_marks_each_reply_and_its_end_of_turn(directories, family):
    tokenizer = _load(directories, family)
    ids, mask = chat.tokenize(tokenizer, CONVERSATION)
    assert _marked(tokenizer, ids, mask) == [f"Paris.{END_OF_TURN[family]}",
                                             f"Rome.{END_OF_TURN[family]}"]
    ids, mask = chat.tokenize(tokenizer, CONVERSATION[:4], add_generation_prompt=True)
    assert _marked(tokenizer, ids, mask) == [f"Paris.{END_OF_TURN[family]}"]


def test_generation_blocks_mark_the_same_tokens_through_transformers(directories):
    """A template with {% generation %} blocks is marked by transformers itself; the same
    template without them gives the same ids and mask by rendering prefixes."""
    plain, marked = _load(directories, "qwen2.5"), _load(directories, "qwen2.5")
    chatml = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
              "{% if message['role'] == 'assistant' %}{{ BLOCK }}{% else %}"
              "{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    reply = "{{ message['content'] }}<|im_end|>\n"
    plain.chat_template = chatml.replace("{{ BLOCK }}", reply)
    marked.chat_template = chatml.replace(
        "{{ BLOCK }}", "{% generation %}" + reply + "{% endgeneration %}")
    ids, mask = chat.tokenize(marked, CONVERSATION)
    assert sum(mask) and (ids, mask) == chat.tokenize(plain, CONVERSATION)


def test_a_conversation_the_template_refuses_fails_naming_the_turn(directories, docs_with):
    gemma = _load(directories, "gemma3")
    turns = [CONVERSATION[1], CONVERSATION[2], CONVERSATION[3], CONVERSATION[3]]
    with pytest.raises(DistillError, match=r"cannot render turn 3 \('user'\) of the conversation:"
                                           r" Conversation roles must alternate"):
        chat.render(gemma, turns)
    with pytest.raises(DistillError, match="turn 3"):
        chat.tokenize(gemma, turns)
    with pytest.raises(DistillError, match="has no chat template"):
        chat.render(data_text.transformers_tokenizer(docs_with("byte")), CONVERSATION)


def test_tokenizers_are_compared_by_tokens_and_special_tokens(directories, docs_with):
    byte, bpe = (data_text.transformers_tokenizer(docs_with(name))
                 for name in ("byte", "bpe:300"))
    llama = _load(directories, "llama3")
    assert text_tokenizers.difference(llama, _load(directories, "llama3")) is None
    assert text_tokenizers.difference(byte, text_tokenizers.load("byte", None, list)) is None
    assert text_tokenizers.difference(byte, llama) == (
        "token 0 is '<pad>' in one and '<|begin_of_text|>' in the other")
    assert text_tokenizers.difference(byte, bpe) == (
        f"token 259 is absent in one and {bpe.convert_ids_to_tokens(259)!r} in the other")
    padded = _load(directories, "llama3")
    padded.pad_token = "<|end_of_text|>"
    assert text_tokenizers.difference(llama, padded) == (
        "the pad token is absent in one and '<|end_of_text|>' in the other")


def test_size_counts_the_embedding_rows_every_id_needs(directories):
    llama = _load(directories, "llama3")
    assert text_tokenizers.size(llama) == len(llama) == len(llama.get_vocab())
    gapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(
        models.WordLevel({"<unk>": 0, "far": 9}, unk_token="<unk>")))
    assert len(gapped) == 2 and text_tokenizers.size(gapped) == 10


def test_a_bare_pretrained_tokenizer_has_no_special_ids(directories, docs_with):
    assert text_tokenizers.special_ids(data.tokenizer(docs_with("byte"))).bos == 1
    bare = Tokenizer.from_file(f"{directories['llama3']}/tokenizer.json")
    with pytest.raises(DistillError, match="names no bos/eos/pad tokens"):
        text_tokenizers.special_ids(bare)
