from pathlib import Path

import pytest
import yaml

from components.common.errors import ConfigError
from pipelines.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "ctpipe.yaml").read_text())


def test_default_config_loads_with_absolute_paths():
    config = load_config(ROOT / "ctpipe.yaml")
    assert Path(config.dataset.source).is_absolute()
    assert config.tracking_uri == f"sqlite:///{ROOT / '.workspace' / 'mlflow.db'}"
    assert config.serving.host == "127.0.0.1"
    assert len(config.dataset.feature_columns) == 12


def test_misspelled_key_is_named(tmp_path):
    raw = _raw()
    raw["serving"]["canary_precent"] = 10
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "serving.canary_precent: unknown key" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("serving", "canary_percent", 150, "serving.canary_percent"),
        ("serving", "port", "eighty", "serving.port"),
        ("dataset", "task", "clustering", "dataset.task"),
        ("model", "estimator", "sklearn.nope.Model", "cannot import module 'sklearn.nope'"),
        ("model", "eval_fraction", 1.5, "model.eval_fraction"),
        ("monitoring", "psi_warn", 0.5, "psi_warn (0.5) must be below psi_retrain"),
        ("monitoring", "importance_floor", 1.5, "monitoring.importance_floor"),
        (
            "monitoring",
            "labels_source",
            {"path": "labels.csv", "max_delay": "3s"},
            "monitoring.labels_source.max_delay: Value error, expected a delay such as 7d, 36h or 90m",
        ),
        ("monitoring", "labels_source", {"path": "labels.csv", "max_dealy": "3d"}, "labels_source.max_dealy"),
    ],
)
def test_wrong_value_names_key_and_expectation(section, key, value, expected):
    raw = _raw()
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(raw, ROOT)
    assert expected in str(err.value)


def test_unknown_metric_is_rejected():
    raw = _raw()
    raw["evaluation"]["metrics"] = [{"name": "roc_auc_scor"}]
    with pytest.raises(ConfigError, match="has no attribute 'roc_auc_scor'"):
        parse_config(raw, ROOT)


def test_missing_required_section_is_named():
    raw = _raw()
    del raw["dataset"]["label_column"]
    with pytest.raises(ConfigError, match=r"dataset.label_column: required key is missing"):
        parse_config(raw, ROOT)


def test_duplicate_column_is_rejected():
    raw = _raw()
    raw["dataset"]["categorical_features"].append("tenure_months")
    with pytest.raises(ConfigError, match="'tenure_months' is named more than once"):
        parse_config(raw, ROOT)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("dataset: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.yaml")


def test_metric_direction_and_inputs():
    config = load_config(ROOT / "ctpipe.yaml")
    by_name = {m.short_name: m for m in config.evaluation.metrics}
    assert by_name["roc_auc_score"].higher_is_better and by_name["roc_auc_score"].uses_scores
    assert not by_name["log_loss"].higher_is_better and by_name["log_loss"].uses_scores
    assert by_name["accuracy_score"].higher_is_better and not by_name["accuracy_score"].uses_scores


def test_config_hash_changes_with_content():
    a = parse_config(_raw(), ROOT)
    raw = _raw()
    raw["model"]["params"]["max_iter"] = 10
    assert a.section_hash() != parse_config(raw, ROOT).section_hash()
    assert a.section_hash() == parse_config(_raw(), ROOT).section_hash()


def test_configuration_reference_is_generated_and_complete():
    from pydantic import BaseModel

    from pipelines.config import CtpipeConfig, reference_markdown

    generated = reference_markdown()
    assert (ROOT / "docs" / "configuration.md").read_text() == generated, (
        "docs/configuration.md is stale: run `python -m pipelines.docgen`"
    )

    def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            found.append(f"{prefix}{name}")
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                inner = getattr(arg, "__args__", (arg,))[0] if getattr(arg, "__args__", None) else arg
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    marker = "[]." if arg is not field.annotation and getattr(arg, "__args__", None) else "."
                    found += keys(inner, f"{prefix}{name}{marker}")
                    break
        return found

    for key in keys(CtpipeConfig):
        assert f"`{key}`" in generated, key


def test_the_serving_namespace_defaults_to_the_cronjobs_own(monkeypatch, tmp_path):
    """The CronJob sets CTPIPE_NAMESPACE to its namespace (the overlay's); a namespace in the config wins."""
    from components.serving_spec import NAMESPACE_ENV, ServingSpec

    cronjob = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests/base/cronjob.yaml").read_text())
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == NAMESPACE_ENV]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

    monkeypatch.delenv(NAMESPACE_ENV, raising=False)
    assert ServingSpec().namespace == "ctpipe"
    monkeypatch.setenv(NAMESPACE_ENV, "ctpipe-staging")
    assert ServingSpec().namespace == "ctpipe-staging"
    assert ServingSpec(namespace="ml").namespace == "ml"
    # Through the config, as the CronJob compiles it: the pipelines' serving parameter carries it.
    assert load_config(Path(__file__).resolve().parents[2] / "manifests/base/ctpipe.yaml").serving.namespace == (
        "ctpipe-staging"
    )


@pytest.mark.parametrize("estimator", ["os.system", "subprocess.Popen"])
def test_an_estimator_outside_the_allowed_modules_is_refused(estimator):
    raw = _raw()
    raw["model"]["estimator"] = estimator
    with pytest.raises(ConfigError, match=r"model\.estimator.*not under an allowed module.*sklearn\., xgboost\."):
        parse_config(raw, ROOT)
