"""The launched app driven through its HTTP API with gradio_client."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def app_ws(tmp_path_factory):
    """(client, workspace): the app launched on 127.0.0.1 in a fresh workspace."""
    from tests.ui.conftest import launched_app

    ws = tmp_path_factory.mktemp("app-ws")
    with launched_app(ws) as url:
        yield gradio_client.Client(url, verbose=False), ws


def test_every_event_has_an_api_name(app_ws):
    client, _ = app_ws
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in [
        "/data_upload",
        "/data_convert",
        "/data_split",
        "/data_validate",
        "/data_identity",
        "/presets_load",
        "/presets_validate",
        "/presets_save",
        "/presets_estimate",
        "/train_start",
        "/train_stop",
        "/train_cancel",
        "/train_resume",
        "/train_poll",
        "/export_adapter",
        "/export_merge",
        "/chat_send",
        "/page_load",
    ]:
        assert name in names, name


def test_upload_convert_and_validate(app_ws):
    client, ws = app_ws
    csv = ws.parent / "outside-qa.csv"  # where a browser upload lands first: outside the workspace
    csv.write_text("Question,Answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    picker, status = client.predict(gradio_client.handle_file(str(csv)), "en", api_name="/data_upload")
    assert (ws / "uploads" / "outside-qa.csv").is_file()
    assert "uploads/outside-qa.csv" in status
    status, out = client.predict(
        "uploads/outside-qa.csv",
        None,
        "Question",
        "Answer",
        "(none)",
        "Be brief.",
        "data/qa.jsonl",
        False,
        "en",
        api_name="/data_convert",
    )
    assert "wrote 2 conversations" in status and (ws / "data" / "qa.jsonl").is_file()
    report, hist, status = client.predict(
        "data/qa.jsonl", "auto", "default", "", 256, "en", api_name="/data_validate"
    )
    assert "2 usable" in report and status.startswith("✅")


def test_errors_come_back_as_status_text(app_ws):
    client, _ = app_ws
    job = client.submit("../../etc/passwd", "en", api_name="/data_inspect")
    with pytest.raises(Exception, match="outside the workspace"):
        job.result()
    *_, status = job.outputs()[-1]
    assert status.startswith("❌") and "outside the workspace" in status


def test_presets_load_and_validate_all_problems(app_ws):
    from tuner.config.schema import KEYS

    client, _ = app_ws
    out = client.predict("smollm2_135m_instruct_lora_identity_256_e3", "en", api_name="/presets_load")
    values = list(out[: len(KEYS)])
    assert out[-1] == "Loaded smollm2_135m_instruct_lora_identity_256_e3"
    assert "python -m tuner train" in out[-2]
    values[KEYS.index("lr")] = 0
    values[KEYS.index("data_path")] = "missing.jsonl"
    job = client.submit(*values, "en", api_name="/presets_validate")
    with pytest.raises(Exception, match="problem"):
        job.result()
    status = job.outputs()[-1]
    assert "lr:" in status and "missing.jsonl" in status


def test_train_view_when_idle(app_ws):
    client, _ = app_ws
    seen, status, *_ = client.predict("", "en", api_name="/train_poll")
    assert "No training run yet" in status or seen
