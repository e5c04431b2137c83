"""The base operator of the project's operators (as ``AwsBaseOperator`` is the amazon provider's):
the connection ids every step may need, their hooks, and the coercion of templated values.

Templated arguments arrive as rendered strings or native objects (``render_template_as_native_obj``)
and an unset optional Param renders as ``None`` or the string ``"None"``: :func:`optional`,
:func:`id_list` and :func:`number_or_none` turn them into what the steps take.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.hooks import MLflowHook, TFServingHook, s3_client_for

UNSET = (None, "", "None")


def optional(value) -> Any:
    """``None`` for an unset templated value (``None``, ``""`` or ``"None"``), else the value."""
    return None if value in UNSET else value


def number_or_none(value) -> float | None:
    value = optional(value)
    return None if value is None else float(value)


def id_list(value) -> list[str]:
    """A list of ids from a list or a comma-separated string; empty when unset."""
    value = optional(value)
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def lineage(context) -> dict[str, str]:
    """The Airflow run a registered version comes from (tags on its MLflow run and version)."""
    ti = context["ti"]
    return {"airflow.dag_id": ti.dag_id, "airflow.run_id": context["run_id"], "airflow.task_id": ti.task_id}


def extra_tags(tags) -> dict[str, str]:
    """More lineage tags (e.g. the search a version comes from) as strings, the unset ones left out
    (a retrain without a search passes ``search.parent_run_id`` None)."""
    return {k: str(v) for k, v in (optional(tags) or {}).items() if v not in UNSET}


class TFMLOpsBaseOperator(BaseOperator):
    """Shared pieces of every step operator: ``mlflow_conn_id`` / ``aws_conn_id`` and their hooks,
    serving endpoints from targets, and a JSON result whose keys are also XComs
    (``multiple_outputs``, so a DAG can pass ``train.output["run_id"]`` on).

    :param mlflow_conn_id: MLflow connection (host/port of the tracking server).
    :param aws_conn_id: AWS connection for ``s3://`` URIs (datasets, partitions, models roots).
    """

    def __init__(self, *, mlflow_conn_id: str = "mlflow_default", aws_conn_id: str = "aws_default", **kwargs):
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self.aws_conn_id = aws_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        return MLflowHook(self.mlflow_conn_id).tracking_uri

    def s3_client_for(self, uri):
        """A boto3 client from ``aws_conn_id`` when ``uri`` is on S3, else None."""
        return s3_client_for(str(uri), self.aws_conn_id)

    def serving_endpoints(self, targets, timeout: float = 60.0, publishing: bool = False) -> list:
        """``Endpoint`` objects for TF Serving connection ids (:meth:`TFServingHook.endpoint`) and
        ``docker:<fleet>`` targets (the fleet's running replicas), in order. With ``publishing``,
        every endpoint needs a models root."""
        endpoints = []
        for target in id_list(targets):
            if target.startswith("docker:"):
                from tfmlops.steps.rollout import fleet_endpoints

                endpoints.extend(fleet_endpoints(target.removeprefix("docker:")))
            else:
                endpoints.append(TFServingHook(target, timeout=timeout).endpoint())
        if not endpoints:
            raise AirflowFailException(f"no serving endpoints in targets {targets!r}")
        missing = [ep.name for ep in endpoints if publishing and not ep.models_root]
        if missing:
            raise AirflowFailException(f"connections {missing} have no extra.models_root to publish versions into")
        return endpoints


DATA_FIELDS: Sequence[str] = ("dataset_uri", "sample_fraction", "seed")


class DatasetOperator(TFMLOpsBaseOperator):
    """A step that reads the dataset (the same spec gives the same rows in every task).

    :param dataset_uri: a dataset the model module reads (``mnist``, Parquet, TFRecord, ...), local or
        ``s3://``. (templated)
    :param sample_fraction: share of the train and test splits to use. (templated)
    :param seed: seed of the sampling and of training. (templated)
    """

    template_fields: Sequence[str] = DATA_FIELDS

    def __init__(self, *, dataset_uri: str = "mnist", sample_fraction: float | str = 1.0, seed: int | str = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.dataset_uri = dataset_uri
        self.sample_fraction = sample_fraction
        self.seed = seed

    def data_spec(self):
        from tfmlops.steps.retrain import DataSpec

        return DataSpec(uri=str(self.dataset_uri), sample_fraction=float(self.sample_fraction), seed=int(self.seed),
                        s3_client=self.s3_client_for(self.dataset_uri))


MODEL_FIELDS: Sequence[str] = (*DATA_FIELDS, "model_module", "hyperparameters", "model_spec")


class ModelDataOperator(DatasetOperator):
    """A step on a model module's model and data. The first task of a run reads the module
    (``model_module`` + ``hyperparameters``); later tasks take what it read as ``model_spec``
    (plain data from XCom), so the module is read once per run.

    :param model_module: dotted path of the model module (an allowed package). (templated)
    :param hyperparameters: JSON object merged over the module's ``HPARAMS``. (templated)
    :param model_spec: the spec read by an earlier task (overrides the two above). (templated)
    """

    template_fields: Sequence[str] = MODEL_FIELDS

    def __init__(self, *, model_module: str | None = None, hyperparameters: dict | str | None = None,
                 model_spec: dict | str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_module = model_module
        self.hyperparameters = hyperparameters
        self.model_spec = model_spec

    def data_spec(self):
        spec = super().data_spec()
        spec.model_module = optional(self.model_module) or spec.model_module  # DataSpec's default: the MNIST MLP
        spec.hyperparameters = optional(self.hyperparameters)
        spec.model_spec = optional(self.model_spec)
        return spec


def allowed_partitions_roots() -> list[str]:
    """Where partitions may be read, written and quarantined: the default root
    (``$TFMLOPS_PARTITIONS_ROOT``, else the embedded stack's ``var/partitions``) and the roots listed
    in the Airflow setting ``[tfmlops] allowed_partitions_roots`` (comma-separated; environment
    ``AIRFLOW__TFMLOPS__ALLOWED_PARTITIONS_ROOTS``). A root is allowed when it is one of them or
    inside one."""
    from airflow.sdk import conf

    from tfmlops_airflow.params import DEFAULT_PARTITIONS_ROOT

    listed = conf.get("tfmlops", "allowed_partitions_roots", fallback="") or ""
    return [DEFAULT_PARTITIONS_ROOT, *(r.strip() for r in listed.split(",") if r.strip())]


def checked_partitions_root(root) -> str:
    """``root`` when it is allowed (:func:`allowed_partitions_roots`), else fail the task naming it."""
    root, allowed = str(root), allowed_partitions_roots()
    if not any(_inside(root, a) for a in allowed):
        raise AirflowFailException(f"partitions root {root!r} is not allowed (allowed: {allowed}; add it to "
                                   "[tfmlops] allowed_partitions_roots)")
    return root


def _inside(root: str, allowed: str) -> bool:
    if root.startswith("s3://") or allowed.startswith("s3://"):
        return (root.rstrip("/") + "/").startswith(allowed.rstrip("/") + "/")
    return os.path.commonpath([os.path.realpath(root), os.path.realpath(allowed)]) == os.path.realpath(allowed)


class PartitionsOperator(TFMLOpsBaseOperator):
    """A step on the partitions of a dataset: ``<root>/<dataset>/incoming/<partition-id>/``. The root
    must be allowed (:func:`allowed_partitions_roots`): a root from a form or an asset event that is
    not fails the task naming it, before anything is read, moved or deleted.

    :param root: partitions root, a local folder or ``s3://bucket/prefix``. (templated)
    :param dataset: dataset name, the folder under the root. (templated)
    """

    template_fields: Sequence[str] = ("root", "dataset")

    def __init__(self, *, root: str, dataset: str = "mnist_stream", **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.dataset = dataset

    @cached_property
    def s3_client(self):
        return self.s3_client_for(self.root)
