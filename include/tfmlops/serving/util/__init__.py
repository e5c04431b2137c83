"""Process-wide utilities, as TF Serving's ``tensorflow_serving/util/``: the metrics registry
(:mod:`.monitoring`, TensorFlow's ``tensorflow/core/lib/monitoring`` for the parts TF Serving
uses) and its Prometheus page (:mod:`.prometheus_exporter`)."""
