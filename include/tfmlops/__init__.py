"""Core library of the project: plain Python + TensorFlow, no Airflow import.

Importing this package is cheap (no TensorFlow import). It pins the Keras flavour for the
whole process and its children: the project runs on tf_keras (Keras 2), because
tensorflow-model-optimization and TF.js layers exports reject Keras 3 models. The variable
must be set before TensorFlow is first imported.

It also turns MLflow's pickle deserialization off by default (MLflow 3.17 allows it): a model in
the registry is data, and nothing here loads one through a path that unpickles
(:mod:`tfmlops.model_files`); anything else in the process that would is refused by MLflow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
