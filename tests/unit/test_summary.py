import io
import re

from pipelines.runner import RunReport, TaskRecord
from pipelines.summary import print_run


def _report(metadata):
    return RunReport(
        pipeline="ctpipe-training",
        succeeded=True,
        seconds=1.0,
        tasks=[TaskRecord("validate", "ran", 0.5)],
        outputs={"validation_report": {"path": "/runs/validate/report", "metadata": metadata}},
        pipeline_root="/runs",
        log_path="/logs/x.log",
    )


def test_summary_lists_validation_warnings():
    out = io.StringIO()
    warnings = ["d.parquet: column 'plan' has 1 values (0.33%) in unseen categories ['x']", "d.parquet: extra ['y']"]
    print_run(_report({"warnings": warnings, "quarantined_rows": 1}), out)
    text = out.getvalue()
    assert "output validation_report: /runs/validate/report" in text
    assert "validation_report: 2 warning(s)" in text
    for line in warnings:
        assert f"    warning: {line}\n" in text


def test_summary_without_warnings_says_nothing_about_them():
    out = io.StringIO()
    print_run(_report({"warnings": [], "quarantined_rows": 0}), out)
    assert "warning" not in out.getvalue()


def test_summary_shows_metrics_against_the_champion_failed_checks_and_decisions():
    out = io.StringIO()
    blessing = {
        "blessed": False,
        "candidate_roc_auc_score": 0.71234,
        "champion_roc_auc_score": 0.8,
        "candidate_log_loss": 0.6,
        "failed_checks": ["roc_auc_score dropped 0.088 against the champion (allowed -0.005)"],
    }
    report = _report(blessing)
    baseline = "holdout metrics of models:/churn/3 as evaluation measured them on 142 held-out rows"
    report.outputs["result"] = {
        "path": "/r",
        "metadata": {"decision": "retrain", "reasons": ["support_calls PSI 1.9"], "performance_baseline": baseline},
    }
    print_run(report, out)
    text = out.getvalue()
    assert f"result: live-performance baseline: {baseline}\n" in text
    assert "metrics: roc_auc_score 0.7123 (champion 0.8); log_loss 0.6\n" in text
    assert "failed check: roc_auc_score dropped 0.088 against the champion (allowed -0.005)" in text
    assert "result: decision: retrain (support_calls PSI 1.9)" in text


def test_a_multiclass_blessing_shows_its_metrics_then_one_line_of_f1_per_class():
    out = io.StringIO()
    blessing = {
        "blessed": True,
        "candidate_class_pro-user_precision": 0.5,
        "candidate_f1_score_macro": 0.81234,
        "candidate_class_pro-user_f1": 0.75,
        "candidate_class_basic_f1": 0.9,
        "candidate_class_basic_recall": 0.95,
        "champion_f1_score_macro": 0.8,
    }
    print_run(_report(blessing), out)
    text = out.getvalue()
    assert "metrics: f1_score_macro 0.8123 (champion 0.8)\n" in text
    assert "f1 per class: basic 0.9; pro-user 0.75\n" in text
    assert "precision" not in text and "recall" not in text


def test_summary_shows_entity_rows_left_out_for_missing_features():
    out = io.StringIO()
    report = _report({"warnings": []})
    # As a training_set output comes back from kfp.local: numbers as floats.
    report.outputs["training_set"] = {"path": "/ts", "metadata": {"rows": 570.0, "missing_entities": 30.0}}
    print_run(report, out)
    assert (
        "  training_set: missing entities: 30 of 600 entity rows (5.0%) had no feature value inside the TTL "
        "and were left out of the training set\n"
    ) in out.getvalue()


def test_summary_is_silent_when_every_entity_has_features():
    out = io.StringIO()
    report = _report({"warnings": []})
    report.outputs["training_set"] = {"path": "/ts", "metadata": {"rows": 600.0, "missing_entities": 0.0}}
    print_run(report, out)
    assert "missing entities" not in out.getvalue()


def _task_log(lines: list[str]) -> dict[str, TaskRecord]:
    """Feed kfp.local's log lines through the runner's parser, as a run does."""
    from pipelines.runner import _TaskLog

    tee = _TaskLog(io.StringIO(), lambda record: None)
    tee.write("\n".join(lines) + "\n")
    return tee.records


def test_the_run_says_which_tasks_were_skipped_and_why():
    from pipelines.runner import CACHE_HIT, CONDITION_FALSE, REGISTRY_CACHE_HIT

    skip = (
        '    {"ts": "2026-01-01T00:00:00Z", "level": "info", "logger": "ctpipe.deploy", "msg": "idempotent skip", '
        '"reason": "the server already serves challenger version 3 at 20%"}'
    )
    records = _task_log(
        [
            "Task ingest cache hit (key=88a39906c49c); skipping execution.",
            "Task register cache hit (key=1a2b3c4d5e6f); skipping execution.",
            "Task infra-validate-2 cache hit (key=1a2b3c4d5e6f); skipping execution.",
            "12:00:00.000 - INFO - Executing task \x1b[96m'deploy'\x1b[0m",
            skip,
            "12:00:01.000 - INFO - Task \x1b[96m'deploy'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
            "12:00:01.000 - INFO - Executing task 'current-champion'",
            "12:00:02.000 - INFO - Task 'current-champion' finished with status SUCCESS",
            "Skipping conditional task condition-3 (condition evaluated to False)",
        ]
    )
    assert (records["ingest"].status, records["ingest"].reason) == ("cached", CACHE_HIT)
    # register and infra validation are keyed on the registry too, so their hit says so.
    assert (records["register"].status, records["register"].reason) == ("cached", REGISTRY_CACHE_HIT)
    assert records["infra-validate-2"].reason == REGISTRY_CACHE_HIT
    assert (records["deploy"].status, records["deploy"].reason) == (
        "no-op",
        "the server already serves challenger version 3 at 20%",
    )
    assert (records["current-champion"].status, records["current-champion"].reason) == ("ran", "")
    assert (records["condition-3"].status, records["condition-3"].reason) == ("skipped", CONDITION_FALSE)

    report = _report({})
    report.tasks = list(records.values())
    out = io.StringIO()
    print_run(report, out)
    text = out.getvalue()
    assert "(1 ran, 1 no-op, 3 cached, 1 skipped)" in text
    assert f"  register                     cached            {REGISTRY_CACHE_HIT}\n" in text
    assert re.search(r"^  deploy +no-op +\d+\.\d  the server already serves challenger version 3 at 20%$", text, re.M)
    as_json = {task["name"]: task for task in report.to_json()["tasks"]}
    assert (as_json["deploy"]["status"], as_json["deploy"]["reason"]) == ("no-op", records["deploy"].reason)
    assert as_json["ingest"]["reason"] == CACHE_HIT


def test_a_failed_task_is_failed_even_after_it_logged_a_skip():
    records = _task_log(
        [
            "Executing task 'register'",
            '{"msg": "idempotent skip", "reason": "nothing to do"}',
            "Task 'register' finished with status FAILURE",
        ]
    )
    assert records["register"].status == "failed"
