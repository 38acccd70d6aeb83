import io

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
    report.outputs["result"] = {"path": "/r", "metadata": {"decision": "retrain", "reasons": ["support_calls PSI 1.9"]}}
    print_run(report, out)
    text = out.getvalue()
    assert "metrics: roc_auc_score 0.7123 (champion 0.8); log_loss 0.6\n" in text
    assert "failed check: roc_auc_score dropped 0.088 against the champion (allowed -0.005)" in text
    assert "result: decision: retrain (support_calls PSI 1.9)" in text


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
