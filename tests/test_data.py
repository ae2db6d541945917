import json
import re

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
