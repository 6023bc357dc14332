"""convert: spreadsheets, csv/tsv and JSON tables -> conversation JSON Lines."""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile

import pytest

from tuner.__main__ import main
from tuner.core.errors import DataError, OutputExistsError
from tuner.data.convert import convert_table
from tuner.data.formats import load_samples
from tuner.data.tables import cell_text, list_columns, list_sheets, preview_rows

DOCTOR = (
    "You are a professional, highly experienced doctor professor. You always provide accurate, "
    "comprehensive, and detailed answers based on the patients' questions."
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def conv(question, answer, system=None):
    turn = {"system": system} if system else {}
    turn.update(input=question, output=answer)
    return {"conversation": [turn]}


def make_xlsx(path, sheets):
    """sheets: {name: rows}; the first row is the header."""
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


# ----------------------------------------------------------------------------- the tutorial's MedQA flow


def test_medqa_tutorial_flow(shared_data, tmp_path, capsys):
    source = shared_data / "MedQA2019.xlsx"
    out = tmp_path / "MedQA2019.jsonl"
    args = ["convert", str(source), str(out), "--sheet", "DrugQA", "--question", "Question"]
    assert main([*args, "--answer", "Answer", "--system", DOCTOR]) == 0
    printed = capsys.readouterr().out
    assert f"read 690 rows from {source} (sheet DrugQA)" in printed
    assert f"wrote 690 conversations to {out}" in printed
    assert "skipped 0 rows" in printed
    records = read_jsonl(out)
    assert len(records) == 690
    assert records[0] == conv(
        "how does rivatigmine and otc sleep medicine interact",
        records[0]["conversation"][0]["output"],
        DOCTOR,
    )
    assert records[0]["conversation"][0]["output"].startswith(
        "tell your doctor and pharmacist what prescription"
    )
    assert all(r["conversation"][0]["system"] == DOCTOR for r in records)
    loaded = load_samples(out)
    assert (loaded.format, len(loaded.samples), loaded.problems) == ("conversation", 690, [])

    # ... then the 7:3 split.
    assert main(["split", str(out)]) == 0
    train, test = tmp_path / "MedQA2019-train.jsonl", tmp_path / "MedQA2019-test.jsonl"
    assert (len(read_jsonl(train)), len(read_jsonl(test))) == (483, 207)


def test_medqa_helpers(shared_data):
    source = shared_data / "MedQA2019.xlsx"
    assert list_sheets(source) == ["DrugQA"]
    assert list_columns(source) == [
        "Question",
        "Focus (Drug)",
        "Question Type",
        "Answer",
        "Section Title",
        "URL",
    ]
    preview = preview_rows(source, "DrugQA", 2)
    assert len(preview) == 2
    assert preview[0]["Focus (Drug)"] == "rivastigmine"
    assert preview[0]["Question Type"] == "Interaction"


# ----------------------------------------------------------------------------- spreadsheets


def test_cells_coerced_and_empty_rows_skipped_with_row_numbers(tmp_path):
    source = make_xlsx(
        tmp_path / "qa.xlsx",
        {
            "Notes": [["ignored"]],
            "QA": [
                ["ID", "问题", "Answer", "When"],
                [1, "几点了？", 3, dt.datetime(2024, 5, 1)],
                [2, "Pi?", 3.14159, dt.datetime(2024, 5, 1, 13, 30)],
                [3, None, "orphan answer", None],
                [4, "Float three?", 3.0, None],
                [None, None, None, None],  # a blank row is not data
                [6, "no answer", "   ", None],
                [7, dt.date(2023, 12, 31), True, None],
                [8, None, None, "only a date"],
            ],
        },
    )
    out = tmp_path / "qa.jsonl"
    result = convert_table(source, out, sheet="QA", question="问题", answer="C")
    assert (result.rows_read, result.rows_written) == (7, 4)
    assert result.skipped == [(4, "empty question"), (7, "empty answer"), (9, "empty question and answer")]
    assert read_jsonl(out) == [
        conv("几点了？", "3"),
        conv("Pi?", "3.14159"),
        conv("Float three?", "3"),
        conv("2023-12-31", "TRUE"),
    ]
    # Non-ASCII is written as is, not as \\u escapes.
    assert "几点了？" in out.read_text(encoding="utf-8")
    assert "skipped 3 rows:\n  row 4: empty question\n  row 7: empty answer" in result.summary()
    # The date column by letter, as a question.
    result = convert_table(source, out, sheet="QA", question="D", answer="问题", force=True)
    assert read_jsonl(out)[:2] == [conv("2024-05-01", "几点了？"), conv("2024-05-01T13:30:00", "Pi?")]


def test_cell_text():
    assert cell_text(None) == ""
    assert cell_text(7) == "7"
    assert cell_text(7.0) == "7"
    assert cell_text(-2.5) == "-2.5"
    assert cell_text(0.1 + 0.2) == "0.3"
    assert cell_text(1e20) == "1e+20"
    assert cell_text(dt.datetime(2024, 1, 2)) == "2024-01-02"
    assert cell_text(dt.time(9, 5)) == "09:05:00"
    assert cell_text(False) == "FALSE"
    assert cell_text({"a": "é"}) == '{"a": "é"}'


def test_cached_formula_value_is_used(tmp_path):
    source = make_xlsx(tmp_path / "f.xlsx", {"S": [["q", "a"], ["one plus two?", "=1+2"]]})
    # openpyxl saves formulas without a cached value; put in the one Excel would have saved.
    patched = tmp_path / "cached.xlsx"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(patched, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                # openpyxl writes the empty value as <v /> or <v></v>, by version
                data = data.replace(b"<f>1+2</f><v />", b"<f>1+2</f><v>3</v>")
                data = data.replace(b"<f>1+2</f><v></v>", b"<f>1+2</f><v>3</v>")
            zout.writestr(item, data)
    out = tmp_path / "f.jsonl"
    convert_table(patched, out)
    assert read_jsonl(out) == [conv("one plus two?", "3")]


def test_system_column_and_default_columns(tmp_path):
    source = make_xlsx(
        tmp_path / "s.xlsx",
        {"Sheet1": [["input", "output", "persona"], ["hi", "hello", "Be brief."], ["bye", "ciao", None]]},
    )
    out = tmp_path / "s.jsonl"
    convert_table(source, out, system_column="persona", system="Default.")
    assert read_jsonl(out) == [conv("hi", "hello", "Be brief."), conv("bye", "ciao", "Default.")]


def test_missing_sheet_lists_sheets(tmp_path):
    source = make_xlsx(tmp_path / "m.xlsx", {"DrugQA": [["Question", "Answer"]], "Other": [["x"]]})
    with pytest.raises(DataError) as info:
        convert_table(source, tmp_path / "o.jsonl", sheet="Drugs")
    assert str(info.value) == f"{source}: no sheet 'Drugs' (the sheets are: 'DrugQA', 'Other')"


def test_missing_column_lists_columns(tmp_path):
    source = make_xlsx(tmp_path / "m.xlsx", {"S": [["Question", None, "Answer"], ["q", "x", "a"]]})
    with pytest.raises(DataError) as info:
        convert_table(source, tmp_path / "o.jsonl", question="Questions", answer="Answer")
    assert str(info.value) == (
        f"{source}: no column 'Questions' in sheet 'S'; the columns are: A 'Question', B, C 'Answer' "
        "(pass --question with a header name or a column letter)"
    )
    with pytest.raises(DataError, match="no column 'Z'"):
        convert_table(source, tmp_path / "o.jsonl", question="A", answer="Z")
    assert not (tmp_path / "o.jsonl").exists()


def test_unguessable_columns_ask_the_user(tmp_path):
    source = tmp_path / "t.csv"
    source.write_text("foo,bar\n1,2\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"which column holds the question\? the columns are: A 'foo', B 'bar'"
    ):
        convert_table(source, tmp_path / "o.jsonl")


def test_corrupt_xlsx(tmp_path, capsys):
    source = tmp_path / "broken.xlsx"
    source.write_bytes(os.urandom(2048))
    out = tmp_path / "o.jsonl"
    assert main(["convert", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {source}: not a readable .xlsx workbook (not a zip archive); the file is corrupt or not a "
        "spreadsheet (open it in Excel or LibreOffice and save it again as .xlsx)\n"
    )
    assert "Traceback" not in err and not out.exists()


def test_password_protected_xlsx(tmp_path):
    # Encrypted workbooks are OLE2 compound files holding an "EncryptedPackage" stream.
    source = tmp_path / "locked.xlsx"
    source.write_bytes(
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500 + "EncryptedPackage".encode("utf-16-le")
    )
    with pytest.raises(DataError, match="password-protected"):
        convert_table(source, tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="password-protected"):
        list_sheets(source)


def test_empty_files(tmp_path):
    for name in ("e.csv", "e.xlsx"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError, match="empty file"):
            convert_table(tmp_path / name, tmp_path / "o.jsonl")
    header_only = tmp_path / "h.csv"
    header_only.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows below the header"):
        convert_table(header_only, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------- csv / tsv / json


def test_gbk_csv(tmp_path):
    source = tmp_path / "gbk.csv"
    source.write_bytes("问题,答案\n你好吗？,我很好，谢谢。\n,没有问题\n".encode("gbk"))
    out = tmp_path / "o.jsonl"
    result = convert_table(source, out)
    assert result.encoding == "GBK"
    assert result.skipped == [(3, "empty question")]
    assert read_jsonl(out) == [conv("你好吗？", "我很好，谢谢。")]


def test_bom_csv_with_quoted_multiline_cell(tmp_path):
    source = tmp_path / "bom.csv"
    source.write_bytes(b"\xef\xbb\xbf" + 'Question,Answer\n"Two, lines?","oui\ntrès"\nq2,\n'.encode())
    out = tmp_path / "o.jsonl"
    result = convert_table(source, out)
    # The BOM does not stick to the first header name.
    assert (result.question_column, result.encoding) == ("Question", "UTF-8 with BOM")
    assert read_jsonl(out) == [conv("Two, lines?", "oui\ntrès")]
    # A quoted cell spanning two lines is still one spreadsheet row.
    assert result.skipped == [(3, "empty answer")]


def test_tsv_and_semicolon_csv(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("q\ta\nWhat, exactly?\tThis, that; and more.\n", encoding="utf-8")
    convert_table(tsv, tmp_path / "t.jsonl")
    assert read_jsonl(tmp_path / "t.jsonl") == [conv("What, exactly?", "This, that; and more.")]
    semi = tmp_path / "s.csv"
    semi.write_text("question;answer\n1,5;2,5\n", encoding="utf-8")
    convert_table(semi, tmp_path / "s.jsonl")
    assert read_jsonl(tmp_path / "s.jsonl") == [conv("1,5", "2,5")]


def test_undecodable_csv(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_bytes(b"question,answer\n\xff\xfe\xff\xff,x\n")
    with pytest.raises(DataError) as info:
        convert_table(source, tmp_path / "o.jsonl")
    assert info.value.line == 2
    assert "cannot decode the text (tried UTF-8, UTF-8 with BOM, UTF-16, GBK)" in str(info.value)


def test_json_and_jsonl_tables(tmp_path):
    array = tmp_path / "a.json"
    array.write_text('[\n{"q": "one?", "a": 1},\n{"q": "two?", "a": null}\n]', encoding="utf-8")
    result = convert_table(array, tmp_path / "a.jsonl", question="q", answer="a")
    assert read_jsonl(tmp_path / "a.jsonl") == [conv("one?", "1")]
    assert (result.unit, result.skipped) == ("line", [(3, "empty answer")])
    lines = tmp_path / "l.jsonl"
    lines.write_text('{"question": "x?", "answer": "y"}\n{"question": \n', encoding="utf-8")
    result = convert_table(lines, tmp_path / "l-out.jsonl")
    assert result.rows_written == 1
    assert [number for number, _ in result.skipped] == [2]


# ----------------------------------------------------------------------------- the CLI verb


def test_cli_never_overwrites_without_force(tmp_path, capsys):
    source = tmp_path / "qa.csv"
    source.write_text("question,answer\nq,a\n", encoding="utf-8")
    out = tmp_path / "qa.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    assert main(["convert", str(source), str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "precious\n"
    with pytest.raises(OutputExistsError):
        convert_table(source, out)
    assert main(["convert", str(source), str(out), "--force", "--system", "S"]) == 0
    assert read_jsonl(out) == [conv("q", "a", "S")]


def test_cli_errors_are_one_line(tmp_path, capsys):
    source = make_xlsx(tmp_path / "m.xlsx", {"DrugQA": [["Question", "Answer"], ["q", "a"]]})
    out = tmp_path / "o.jsonl"
    assert main(["convert", str(source), str(out), "--sheet", "Nope"]) == 2
    assert capsys.readouterr().err == f"error: {source}: no sheet 'Nope' (the sheets are: 'DrugQA')\n"
    assert main(["convert", str(tmp_path / "missing.csv"), str(out)]) == 2
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --system and --system-column exclude each other
        main(["convert", str(source), str(out), "--system", "a", "--system-column", "B"])
    assert not out.exists()


def test_formula_cells_without_saved_values_and_hidden_rows_are_said_as_such(tmp_path):
    import openpyxl

    from tuner.core.io import read_jsonl

    book = openpyxl.Workbook()  # openpyxl computes no formulas: like files written by scripts
    sheet = book.active
    sheet.append(["Question", "Answer"])
    sheet.append(["What is 2+2?", "=2+2"])
    sheet.append(["Hi?", "Hello"])
    sheet.append(["Old question?", "Old answer"])
    sheet.append(["Bye?", ""])
    sheet.row_dimensions[4].hidden = True
    source = tmp_path / "qa.xlsx"
    book.save(source)
    result = convert_table(source, tmp_path / "qa.jsonl")
    reasons = dict(result.skipped)
    assert "answer is a formula with no saved value" in reasons[2] and "save it" in reasons[2]
    assert reasons[5] == "empty answer"
    assert result.hidden == [4] and "1 hidden row(s) were converted like the others (4)" in result.summary()
    assert [r["conversation"][0]["input"] for r in read_jsonl(tmp_path / "qa.jsonl")] == ["Hi?", "Old question?"]
