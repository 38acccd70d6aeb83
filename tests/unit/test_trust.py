"""Issue 20: config as code only from allowed modules, and models only from the registry, hash-checked.

A config that names ``os.system`` (or ``subprocess.Popen``, ``builtins.eval``, a class that is not an
estimator) is refused when the config loads and again inside the train step, before the module is
imported. A model is loaded only from ``models:/`` URIs of the configured registry, and a pickle
changed after train logged it is refused before it is unpickled.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from components.common import tracking
from components.common.errors import ConfigError, ModelNotFound
from components.common.imports import ALLOWED_MODULES_ENV, import_estimator, import_metric
from components.specs import DatasetSpec, MetricSpec, ModelSpec
from components.train import TrainResult, build_pipeline, train

ROOT = Path(__file__).resolve().parents[2]
LOGISTIC = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300})
HOSTILE = ["os.system", "subprocess.Popen", "builtins.eval"]
NOT_ESTIMATORS = ["sklearn.utils.Bunch", "sklearn.metrics.roc_auc_score"]
DEFAULT_PREFIXES = "sklearn., xgboost., lightgbm."


@pytest.fixture(autouse=True)
def _no_extra_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWED_MODULES_ENV, raising=False)


def _config_with(**model: Any) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["model"] = {**(raw.get("model") or {}), **model}
    return raw


# --- config as code ------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", HOSTILE)
def test_a_hostile_estimator_is_refused_at_config_load(estimator: str) -> None:
    from pipelines.config import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(_config_with(estimator=estimator), ROOT)
    message = str(err.value)
    assert "model.estimator" in message and repr(estimator) in message
    assert "not under an allowed module" in message and DEFAULT_PREFIXES in message
    assert ALLOWED_MODULES_ENV in message


@pytest.mark.parametrize("estimator", NOT_ESTIMATORS)
def test_a_class_or_function_that_is_not_an_estimator_is_refused_at_config_load(estimator: str) -> None:
    from pipelines.config import parse_config

    with pytest.raises(ConfigError, match=r"model.estimator.*is not a scikit-learn estimator class"):
        parse_config(_config_with(estimator=estimator), ROOT)


@pytest.mark.parametrize("estimator", [*HOSTILE, *NOT_ESTIMATORS, "collections.OrderedDict"])
def test_the_train_step_refuses_what_the_config_would_have(
    estimator: str, dataset_spec: DatasetSpec, churn_data: tuple[Path, list], tmp_path: Path, tracking_uri: str
) -> None:
    # The train step gets the spec as a run parameter: built here without validation.
    spec = ModelSpec.model_construct(estimator=estimator, params={}, random_seed=0, eval_fraction=0.25, search=None)
    with pytest.raises(ConfigError, match=re.escape(repr(estimator))):
        build_pipeline(dataset_spec, spec)
    with pytest.raises(ConfigError, match=r"model\.estimator"):
        train(str(churn_data[0]), dataset_spec, spec, tracking_uri, "trust", str(tmp_path / "eval.parquet"))


def _side_effect_module(folder: Path, name: str, marker: Path) -> None:
    """A module whose import writes ``marker``: proof of whether it was imported."""
    (folder / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "from sklearn.linear_model import LogisticRegression as Estimator\n"
        "def not_an_estimator():\n    return 1\n"
    )


def test_the_prefix_is_checked_before_the_module_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset_spec: DatasetSpec
) -> None:
    from pipelines.config import parse_config

    name = "ctpipe_trust_side_effect"
    marker = tmp_path / "imported"
    _side_effect_module(tmp_path, name, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ConfigError, match="not under an allowed module"):
        parse_config(_config_with(estimator=f"{name}.Estimator"), ROOT)
    with pytest.raises(ConfigError, match="not under an allowed module"):
        build_pipeline(dataset_spec, ModelSpec.model_construct(estimator=f"{name}.Estimator", params={}))
    with pytest.raises(ConfigError, match="not under an allowed module"):
        import_metric(f"{name}.not_an_estimator", "metric")
    assert not marker.exists() and name not in sys.modules

    # The image (or the compiling machine) can add a prefix; the kind is still checked.
    monkeypatch.setenv(ALLOWED_MODULES_ENV, f"{name}.")
    assert import_estimator(f"{name}.Estimator").__name__ == "LogisticRegression"
    assert marker.exists()
    with pytest.raises(ConfigError, match="not a scikit-learn estimator class"):
        import_estimator(f"{name}.not_an_estimator")
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_run_cannot_widen_the_list() -> None:
    """No config key (hence no run parameter) names allowed modules: only the environment does."""
    from pipelines.config import parse_config

    with pytest.raises(ConfigError, match="allowed_modules"):
        parse_config(_config_with(allowed_modules=["os."]), ROOT)
    with pytest.raises(Exception, match="allowed_modules"):
        ModelSpec.model_validate({"estimator": "sklearn.linear_model.LogisticRegression", "allowed_modules": ["os."]})


@pytest.mark.parametrize(
    "path", ["sklearn..linear_model.X", ".sklearn.X", "sklearn.linear_model.", "sklearn", "sklearn/../os.system"]
)
def test_malformed_paths_are_refused_before_import(path: str) -> None:
    with pytest.raises(ConfigError, match="not a dotted import path"):
        import_estimator(path)


def test_a_malformed_extra_prefix_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_MODULES_ENV, "mycompany")
    with pytest.raises(ConfigError, match=ALLOWED_MODULES_ENV):
        import_estimator("sklearn.linear_model.LogisticRegression")


@pytest.mark.parametrize("metric", [*HOSTILE, "sklearn.linear_model.LogisticRegression", "sklearn.utils.Bunch"])
def test_metrics_are_functions_under_sklearn_metrics(metric: str, models: Models) -> None:
    from components.evaluate import compute_metrics
    from pipelines.config import parse_config

    raw = _config_with()
    raw["evaluation"] = {"metrics": [{"name": metric}]}
    with pytest.raises(ConfigError, match=re.escape(repr(metric))):
        parse_config(raw, ROOT)
    # Inside the step, where the spec arrives as a run parameter.
    model = tracking.load_registered_model(models.result.model_uri, models.uri)
    frame = pd.read_parquet(models.result.eval_path)
    with pytest.raises(ConfigError, match=re.escape(repr(metric))):
        compute_metrics(model, frame, models.spec, [MetricSpec.model_construct(name=metric, input="auto")])


def test_sklearn_metrics_still_load() -> None:
    assert import_metric("sklearn.metrics.roc_auc_score").__name__ == "roc_auc_score"
    assert MetricSpec(name="f1_score").import_path == "sklearn.metrics.f1_score"


# --- models only from the registry --------------------------------------------------------------


class Models:
    def __init__(self, uri: str, result: TrainResult, spec: DatasetSpec, folder: Path) -> None:
        self.uri, self.result, self.spec, self.folder = uri, result, spec, folder


@pytest.fixture(scope="module")
def models(churn_data: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Models:
    from tests.data import churn_spec

    folder = tmp_path_factory.mktemp("trust")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = churn_spec(churn_data[0])
    result = train(str(churn_data[0]), spec, LOGISTIC, uri, "trust", str(folder / "eval.parquet"))
    client = tracking.registry_client(uri)
    client.create_registered_model("trusted")
    model_id = result.model_uri.removeprefix("models:/")
    version = client.create_model_version("trusted", result.model_uri, result.run_id, model_id=model_id)
    client.set_registered_model_alias("trusted", "champion", version.version)
    return Models(uri, result, spec, folder)


def _artifact_dir(models: Models, model_uri: str) -> Path:
    logged = tracking.registry_client(models.uri).get_logged_model(model_uri.removeprefix("models:/"))
    return Path(logged.artifact_location.removeprefix("file://"))


def test_train_records_the_sha256_of_the_pickle(models: Models) -> None:
    client = tracking.registry_client(models.uri)
    model_id = models.result.model_uri.removeprefix("models:/")
    recorded = client.get_logged_model(model_id).tags[tracking.MODEL_SHA256_TAG]
    pickled = _artifact_dir(models, models.result.model_uri) / tracking.PICKLED_MODEL
    assert recorded == hashlib.sha256(pickled.read_bytes()).hexdigest()
    for uri in (models.result.model_uri, "models:/trusted/1", "models:/trusted@champion"):
        assert hasattr(tracking.load_registered_model(uri, models.uri), "predict_proba")


BAD_URIS = [
    "runs:/0123456789abcdef/model",
    "/tmp/model",
    "model",
    "file:///tmp/model",
    "s3://bucket/model",
    "models://profile@databricks/trusted/1",
    "models:/trusted/latest",
    "models:/trusted/1/../../x",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_only_registry_uris_are_accepted_by_every_loader(uri: str, models: Models, tmp_path: Path) -> None:
    from components.batch_predict import batch_predict
    from components.evaluate import evaluate
    from components.monitor import monitor
    from components.specs import EvaluationSpec, MonitoringSpec

    accepted = re.escape("models:/NAME/VERSION, models:/NAME@ALIAS or models:/m-<id>")
    with pytest.raises(ConfigError, match=accepted):
        tracking.load_registered_model(uri, models.uri)
    with pytest.raises(ConfigError, match=accepted):
        tracking.load_downloaded_model(tmp_path, uri, tracking.registry_client(models.uri))
    eval_path = models.result.eval_path
    with pytest.raises(ConfigError, match=accepted):
        evaluate(
            uri, eval_path, models.spec, EvaluationSpec(), models.uri, None, str(tmp_path / "b"), str(tmp_path / "r")
        )
    with pytest.raises(ConfigError, match=accepted):
        evaluate(
            models.result.model_uri,
            eval_path,
            models.spec,
            EvaluationSpec(),
            models.uri,
            uri,
            str(tmp_path / "b"),
            str(tmp_path / "r"),
        )
    with pytest.raises(ConfigError, match=accepted):
        monitor(
            eval_path,
            eval_path,
            models.spec,
            MonitoringSpec(),
            str(tmp_path / "m.json"),
            str(tmp_path / "m.html"),
            model_uri=uri,
            tracking_uri=models.uri,
        )
    with pytest.raises(ConfigError, match=accepted):
        batch_predict(eval_path, models.spec, uri, models.uri, str(tmp_path / "out"))


class _Marker:
    """Unpickling this creates the marker file: proof that a pickle was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _tampered(models: Models, tmp_path: Path) -> tuple[str, Path]:
    """Train another model, register it, then swap its pickle for one that leaves a marker when unpickled."""
    result = train(str(models.spec.source), models.spec, LOGISTIC, models.uri, "trust", str(tmp_path / "eval.parquet"))
    client = tracking.registry_client(models.uri)
    name = f"tampered-{tmp_path.name}"
    client.create_registered_model(name)
    model_id = result.model_uri.removeprefix("models:/")
    version = client.create_model_version(name, result.model_uri, result.run_id, model_id=model_id)
    client.set_registered_model_alias(name, "champion", version.version)
    marker = tmp_path / "unpickled"
    (_artifact_dir(models, result.model_uri) / tracking.PICKLED_MODEL).write_bytes(pickle.dumps(_Marker(marker)))
    return name, marker


def test_a_model_changed_after_registration_is_refused_before_unpickling(models: Models, tmp_path: Path) -> None:
    from components.batch_predict import batch_predict
    from components.evaluate import evaluate
    from components.monitor import monitor
    from components.specs import EvaluationSpec, MonitoringSpec

    name, marker = _tampered(models, tmp_path)
    client = tracking.registry_client(models.uri)
    version = client.get_model_version_by_alias(name, "champion")
    model_id = str(version.source).removeprefix("models:/")
    recorded = client.get_logged_model(model_id).tags[tracking.MODEL_SHA256_TAG]
    both = rf"SHA-256 [0-9a-f]{{64}}, but train recorded {recorded}"
    for uri in (f"models:/{name}/{version.version}", f"models:/{name}@champion", f"models:/{model_id}"):
        with pytest.raises(tracking.ModelIntegrityError, match=both):
            tracking.load_registered_model(uri, models.uri)
    # A folder a step downloaded itself (model server, infra validation, register, batch predict).
    local = tracking.download_model(f"models:/{name}/{version.version}", models.uri, tmp_path / "download")
    with pytest.raises(tracking.ModelIntegrityError, match=both):
        tracking.load_downloaded_model(local, f"models:/{name}/{version.version}", client)
    eval_path = models.result.eval_path
    with pytest.raises(tracking.ModelIntegrityError):
        evaluate(
            f"models:/{name}@champion",
            eval_path,
            models.spec,
            EvaluationSpec(),
            models.uri,
            None,
            str(tmp_path / "b"),
            str(tmp_path / "r"),
        )
    with pytest.raises(tracking.ModelIntegrityError):
        monitor(
            eval_path,
            eval_path,
            models.spec,
            MonitoringSpec(),
            str(tmp_path / "m.json"),
            str(tmp_path / "m.html"),
            model_uri=f"models:/{name}@champion",
            tracking_uri=models.uri,
        )
    with pytest.raises(tracking.ModelIntegrityError):
        batch_predict(eval_path, models.spec, f"models:/{name}@champion", models.uri, str(tmp_path / "out"))
    assert not marker.exists(), "the tampered pickle was unpickled"


def test_the_model_server_refuses_a_tampered_version(models: Models, tmp_path: Path) -> None:
    from serving.model import CtpipeModel

    name, marker = _tampered(models, tmp_path)
    with pytest.raises(tracking.ModelIntegrityError):
        CtpipeModel(name, models.uri).load_version("1")
    assert not marker.exists()


def test_a_model_without_a_recorded_hash_is_refused(models: Models, tmp_path: Path) -> None:
    import mlflow
    import mlflow.sklearn

    model = tracking.load_registered_model(models.result.model_uri, models.uri)
    tracking.ensure_experiment("trust-unhashed", models.uri)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
    with pytest.raises(tracking.ModelIntegrityError, match="no SHA-256 was recorded"):
        tracking.load_registered_model(info.model_uri, models.uri)
    # An operator who has checked the artifact can record it; then it loads.
    tracking.record_model_sha256(info.model_id, models.uri)
    assert hasattr(tracking.load_registered_model(info.model_uri, models.uri), "predict")


def test_a_missing_version_is_model_not_found(models: Models) -> None:
    with pytest.raises(ModelNotFound):
        tracking.load_registered_model("models:/trusted/99", models.uri)


def test_no_step_unpickles_a_model_except_through_the_checked_loader() -> None:
    """Pipeline steps and the model server load models only through ``tracking``'s checked loaders."""
    unchecked = re.compile(r"load_sklearn_model\(|mlflow\.(sklearn|pyfunc)\.load_model\(|pickle\.loads?\(")
    offenders = []
    for folder in ("components", "serving", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "tracking.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                # batch_predict's executors unpickle the bytes the driver made from the checked model.
                if unchecked.search(line) and "shipped.value" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
