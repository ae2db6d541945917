import json

import pytest

from labkit.data import (detect_format, duplicate_report, load_jsonl, read_jsonl, train_val_split,
                         write_jsonl)


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
