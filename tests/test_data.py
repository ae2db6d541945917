import json
import re

import pytest

from labkit.data import (detect_format, duplicate_report, extra_fields, load_jsonl, load_table, read_jsonl,
                         train_val_split, write_jsonl)


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("record,fmt", [
    ({"text": "a"}, "text"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
    ({"prompt": "p", "answer": " a"}, "cloze"),
    ({"word": "w", "sense": "s", "prompt": "p", "continuation": " c"}, "sense"),
])
def test_formats_load_as_datasets(tmp_path, record, fmt):
    p = write(tmp_path, [json.dumps(record)] * 2)
    assert detect_format(record) == fmt
    ds = load_jsonl(p, fmt)
    assert len(ds) == 2 and set(record) <= set(ds.column_names)


def test_malformed_json_names_file_and_line(tmp_path):
    p = write(tmp_path, ['{"text": "ok"}', '{"text": "fine"}', '{"text": oops}'])
    with pytest.raises(ValueError, match=r"d\.jsonl:3: not valid JSON"):
        read_jsonl(p)


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "p"}', "missing field 'completion'"),
    ('{"prompt": "p", "completion": ""}', "field 'completion' is empty"),
    ('{"prompt": "p", "completion": 3}', "must be a string, got int"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_records_name_the_line_and_problem(tmp_path, line, message):
    p = write(tmp_path, ['{"prompt": "a", "completion": "b"}', line])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: .*" + message.replace("(", r"\(")):
        read_jsonl(p, "prompt_completion")


def test_messages_checks(tmp_path):
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}
    p = write(tmp_path, [json.dumps(bad)])
    with pytest.raises(ValueError, match=r":1: messages\[1\]\.role"):
        read_jsonl(p, "messages")
    no_answer = {"messages": [{"role": "user", "content": "q"}]}
    p = write(tmp_path, [json.dumps(no_answer)])
    with pytest.raises(ValueError, match="last message must be the assistant"):
        read_jsonl(p, "messages")


def test_empty_file_and_missing_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: the file is empty"):
        read_jsonl(p)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_split_filter(tmp_path):
    p = write(tmp_path, ['{"text": "a", "split": "train"}', '{"text": "b", "split": "heldout"}'])
    assert load_jsonl(p, split="heldout")["text"] == ["b"]
    with pytest.raises(ValueError, match="no records with split='dev'"):
        load_jsonl(p, split="dev")


def test_duplicate_report_exact_and_near():
    recs = [{"text": "Hello, world"}, {"text": "other"}, {"text": "Hello, world"}, {"text": "hello world!"}]
    assert duplicate_report(recs) == [(1, 3)]
    assert duplicate_report(recs, near=True) == [(1, 3), (1, 4)]


def test_split_is_deterministic(tmp_path):
    p = write(tmp_path, [json.dumps({"text": f"t{i}"}) for i in range(50)])
    ds = load_jsonl(p)
    a_train, a_val = train_val_split(ds, 0.2, seed=1)
    b_train, b_val = train_val_split(ds, 0.2, seed=1)
    assert a_val["text"] == b_val["text"] and len(a_val) == 10
    assert not set(a_val["text"]) & set(a_train["text"])
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ds, 1.5)


def test_write_jsonl_validates_and_is_atomic(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [{"text": "a"}])
    with pytest.raises(ValueError, match=r"record 2: field 'text' is empty .*nothing was written"):
        write_jsonl(p, [{"text": "b"}, {"text": " "}])
    assert read_jsonl(p) == [{"text": "a"}]


# --- what a clumsy learner's file looks like (issue #18) ---------------------------------------

def test_a_file_that_is_not_utf8_names_the_file_the_line_and_the_byte(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes('{"text": "ok"}\n{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9.*save the file as UTF-8"):
        read_jsonl(p)


def test_a_utf16_file_is_named_as_such(tmp_path):
    p = tmp_path / "u16.jsonl"
    p.write_text('{"text": "ok"}\n', encoding="utf-16")
    with pytest.raises(ValueError, match="u16.jsonl: the file is UTF-16; save it as UTF-8"):
        read_jsonl(p)


def test_a_utf8_file_with_a_byte_order_mark_reads(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_text('{"text": "ok"}\n', encoding="utf-8-sig")
    assert read_jsonl(p) == [{"text": "ok"}]


def test_a_line_too_long_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    import labkit.data as data

    monkeypatch.setattr(data, "MAX_LINE_BYTES", 1000)
    p = write(tmp_path, ['{"text": "short"}', json.dumps({"text": "x" * 5000})])
    with pytest.raises(ValueError, match=r"d.jsonl:2: the line is longer than"):
        read_jsonl(p)


@pytest.mark.parametrize("record,problem", [
    ({"prompt": "p", "chosen": "same", "rejected": "same "}, "'chosen' and 'rejected' are the same text"),
    ({"prompt": "p", "chosen": "a\ud800b", "rejected": "c"}, r"U\+D800 at position 1"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "needs a user message"),
    ({"messages": [{"role": "user", "content": "q\udfff"}, {"role": "assistant", "content": "a"}]},
     r"messages\[0\].content.*U\+DFFF"),
    ({"text": "x" * 200_001}, "200,001 characters long"),
])
def test_records_a_learner_can_get_wrong(record, problem):
    from labkit.data import check_record

    assert re.search(problem, check_record(record, detect_format(record)))


def test_check_records_names_the_list_item(tmp_path):
    from labkit.data import check_records

    assert check_records([{"text": "a"}, {"text": "b"}], "train_data") == "text"
    with pytest.raises(ValueError, match=r"train_data\[1\]: field 'text' is empty"):
        check_records([{"text": "a"}, {"text": " "}], "train_data")
    with pytest.raises(ValueError, match=r"train_data\[0\]: expected a dict, got NoneType"):
        check_records([None], "train_data")
    with pytest.raises(ValueError, match=r"train_data\[1\]: format 'prompt_completion', but the records before"):
        check_records([{"text": "a"}, {"prompt": "p", "completion": "c"}], "train_data")
    with pytest.raises(ValueError, match="train_data is empty"):
        check_records([], "train_data")


# --- issue #20: TRL's chat conventions, and your own data from CSV, Parquet or the hub ------------

TOOL_CHAT = {"messages": [
    {"role": "system", "content": "You can call get_weather."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "name": "get_weather", "content": "4 C, rain"},
    {"role": "assistant", "content": "4 degrees and rain in Oslo."}], "source": "synthetic"}


def test_tool_role_and_extra_message_keys_are_accepted_kept_and_reported(tmp_path):
    p = write(tmp_path, [json.dumps({"messages": TOOL_CHAT["messages"][1:2] + TOOL_CHAT["messages"][-1:]}),
                         json.dumps(TOOL_CHAT)])
    records = read_jsonl(p, "messages")
    assert records[1]["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert extra_fields(records) == {"messages[].name": 1, "messages[].tool_calls": 1, "source": 1}
    ds = load_jsonl(p)                                          # a field only a later record has is kept
    assert ds.column_names == ["messages", "source"] and ds[1]["source"] == "synthetic"
    assert ds[1]["messages"][3]["role"] == "tool"


@pytest.mark.parametrize("message, error", [
    ({"role": "assistant", "content": None}, r"field .messages\[1\].content. is empty"),      # no text, no tool call
    ({"role": "assistant"}, r"messages\[1\] has no 'content'"),
    ({"role": "robot", "content": "a"}, r"messages\[1\]\.role is 'robot'; expected one of .*'tool'")])
def test_a_reply_needs_text_unless_it_calls_a_tool(tmp_path, message, error):
    p = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "q"}, message]})])
    with pytest.raises(ValueError, match=r"d\.jsonl:1: " + error):
        read_jsonl(p, "messages")


def test_a_csv_maps_to_prompt_completion_with_cells_as_text(tmp_path):
    p = tmp_path / "faq.csv"
    p.write_text('question,answer,topic\nHow many legs has a spider?,8,biology\n"Say ""hi"", twice",'
                 '"hi, hi",greeting\n')
    records = load_table(p, columns={"prompt": "question", "completion": "answer"})
    assert records == [{"prompt": "How many legs has a spider?", "completion": "8", "topic": "biology"},
                       {"prompt": 'Say "hi", twice', "completion": "hi, hi", "topic": "greeting"}]
    assert extra_fields(records) == {"topic": 2}
    p.write_text(p.read_text() + "What is 2+2?,,maths\n")          # a blank cell, in the third row
    with pytest.raises(ValueError, match=r"faq\.csv, row 3: field 'completion' is empty"):
        load_table(p, columns={"prompt": "question", "completion": "answer"})
    with pytest.raises(ValueError, match=r"faq\.csv, row 1: no column 'reply'; the columns are \['question'"):
        load_table(p, columns={"prompt": "question", "completion": "reply"})
    with pytest.raises(ValueError, match=r"faq\.csv, row 1: no known format has fields"):
        load_table(p)


def test_csv_columns_can_build_conversations(tmp_path):
    p = tmp_path / "chat.tsv"
    p.write_text("sys\tq\ta\n\tHi\tHello!\nBe brief.\tName a colour\tRed.\n")
    records = load_table(p, columns={"system": "sys", "user": "q", "assistant": "a"}, format="messages")
    assert [[m["role"] for m in r["messages"]] for r in records] == [["user", "assistant"],
                                                                    ["system", "user", "assistant"]]
    assert records[1]["messages"][0]["content"] == "Be brief." and detect_format(records[0]) == "messages"
    with pytest.raises(ValueError, match="pass format='messages'"):
        load_table(p, columns={"user": "q", "assistant": "a"})


def test_a_parquet_file_with_tool_calls_loads_as_trl_would(tmp_path):
    from datasets import Dataset

    other = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
             "source": "synthetic"}
    path = tmp_path / "chats.parquet"
    Dataset.from_list([TOOL_CHAT, other, other]).to_parquet(str(path))
    records = load_table(path, limit=2)
    assert len(records) == 2 and records[0]["messages"][3] == {"role": "tool", "name": "get_weather",
                                                               "content": "4 C, rain", "tool_calls": None}
    bad = {**other, "messages": other["messages"][:1]}
    Dataset.from_list([other, bad]).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"chats\.parquet, row 2: the last message must be the assistant"):
        load_table(path)


def test_a_hub_dataset_is_loaded_mapped_and_checked(monkeypatch):
    """No network here: datasets.load_dataset is replaced by a stand-in that records its call."""
    import datasets
    from datasets import Dataset

    calls = []

    def fake_load_dataset(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        if hub_id == "nobody/nothing":
            raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
        return Dataset.from_list([{"instruction": "Name a fruit", "output": "Apple", "id": 1}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_table("someone/fruit-qa", columns={"prompt": "instruction", "completion": "output"}, limit=3)
    assert calls == [("someone/fruit-qa", None, "train[:3]")]
    assert records[0] == {"prompt": "Name a fruit", "completion": "Apple", "id": 1}
    with pytest.raises(ValueError, match=r"nobody/nothing \(split 'train'\): could not load it .*doesn't exist"):
        load_table("nobody/nothing")
    with pytest.raises(ValueError, match=r"source='my data\.xlsx' is no data file .* and no hub dataset id"):
        load_table("my data.xlsx")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: no such data file"):
        load_table("missing.csv")
    assert len(calls) == 2


def test_json_lines_and_a_json_array_load_alike(tmp_path):
    rows = [{"q": "Name a fruit", "a": "Apple"}, {"q": "Name a colour", "a": "Red"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=1))
    for name in ("rows.jsonl", "rows.json"):
        records = load_table(tmp_path / name, columns={"prompt": "q", "completion": "a"}, limit=1)
        assert records == [{"prompt": "Name a fruit", "completion": "Apple"}], name
    (tmp_path / "rows.json").write_text(json.dumps(rows + ["oops"]))
    with pytest.raises(ValueError, match=r"rows\.json, row 3: expected a JSON object"):
        load_table(tmp_path / "rows.json")
