"""docs/performance.md states the speed settings as the code has them: its table is generated from
SpeedSettings' field metadata and must equal the generator's output, so README, ARCHITECTURE and this
page never restate the list by hand."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from bench.train_speed import report
from tuner.config.speed import SpeedSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


def test_the_settings_table_in_docs_performance_is_the_generated_one():
    text = DOC.read_text()
    assert report.with_settings_table(text) == text, (
        "docs/performance.md's speed-settings table is stale: run "
        "python -m bench.train_speed --settings-table docs/performance.md"
    )


def test_the_table_has_one_row_per_setting_with_its_variable_and_its_measurement():
    table = report.settings_table().splitlines()
    settings = fields(SpeedSettings)
    assert len(table) == 2 + len(settings)
    for line, f in zip(table[2:], settings, strict=True):
        assert line.startswith(f"| `{f.name}` | `{f.metadata['env']}` |")
        assert f.metadata["measured"].replace("|", "\\|") in line
        assert "bench/results/" in f.metadata["measured"] or ".json" in f.metadata["measured"]


def test_regenerating_a_stale_table_replaces_only_the_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"before\n{report.TABLE_BEGIN}\n| old |\n{report.TABLE_END}\nafter\n")
    report.write_settings_table(page)
    assert (
        page.read_text()
        == f"before\n{report.TABLE_BEGIN}\n{report.settings_table()}\n{report.TABLE_END}\nafter\n"
    )
