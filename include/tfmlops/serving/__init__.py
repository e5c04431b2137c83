"""``tf-serving-local``: a TensorFlow Serving-compatible model server in Python.

It answers TF Serving's REST API and gRPC ``PredictionService``/``ModelService`` (the official
tensorflow-serving-api messages) with TF Serving's flags, status codes, error messages and JSON,
serving SavedModel versions from ``<base_path>/<N>/`` and ``ModelServerConfig`` files. Entry point:
``tf-serving-local`` (:func:`tfmlops.serving.model_servers.main.main`), or
``python -m tfmlops.serving.model_servers.main``.

The package is usable alone: nothing under ``tfmlops.serving`` imports another part of
``tfmlops``, MLflow or Airflow (``tests/serving/test_package_layout.py`` checks it). The
deployment side (``tfmlops.deploy``: client, publishing, rollouts) drives it from outside, like
any TF Serving.

The modules follow TF Serving's source tree (``tensorflow_serving/...``):

=================================================  =========================================================
module                                             TF Serving source it mirrors
=================================================  =========================================================
``errors``                                         ``tensorflow::Status`` codes; ``model_servers/http_server.cc``
                                                   (HTTP status mapping)
``tensors``                                        TensorFlow's ``TensorProto`` <-> ``Tensor`` conversion
``json_tensor``                                    ``util/json_tensor.cc``
``config``                                         ``config/model_server_config.proto`` files,
                                                   ``servables/tensorflow/session_bundle_config.proto``
                                                   (BatchingParameters), ServerCore's config checks
``batching``                                       ``batching/batching_session.cc`` + SharedBatchScheduler
``model_servers.main``                             ``model_servers/main.cc``
``model_servers.server``                           ``model_servers/server.cc``
``model_servers.server_core``                      ``model_servers/server_core.cc``
``model_servers.http_server``                      ``model_servers/http_server.cc``
``model_servers.http_rest_api_handler``            ``model_servers/http_rest_api_handler.cc``
``model_servers.grpc_server``                      the gRPC part of ``model_servers/server.cc``
``model_servers.grpc_status_util``                 ``model_servers/grpc_status_util.cc``
``model_servers.prediction_service_impl``          ``model_servers/prediction_service_impl.cc``
``model_servers.model_service_impl``               ``model_servers/model_service_impl.cc``
``model_servers.get_model_status_impl``            ``model_servers/get_model_status_impl.cc``
``model_servers.get_model_metadata_impl``          ``model_servers/get_model_metadata_impl.cc``
``core.servable_state_monitor``                    ``core/servable_state_monitor.cc``
``core.server_request_logger``                     ``core/request_logger.cc`` + ``core/server_request_logger.cc``
``core.log_collector``                             none (TF Serving's open-source build has no collector)
``core.aspired_versions_manager``                  ``core/aspired_versions_manager.cc`` +
                                                   ``core/availability_preserving_policy.cc``
``sources.storage_path``                           ``sources/storage_path/file_system_storage_path_source.cc``
``sources.s3_cache``                               none (tf-serving-local's ``s3://`` base paths)
``servables.saved_model_bundle``                   ``servables/tensorflow/saved_model_bundle_factory.cc`` +
                                                   ``saved_model_servable.cc``
``servables.predict``                              ``servables/tensorflow/predict_util.cc``
``servables.classifier``                           ``servables/tensorflow/classifier.cc``
``servables.regressor``                            ``servables/tensorflow/regressor.cc``
``servables.util``                                 ``servables/tensorflow/util.cc``
``servables.multi_inference``                      ``servables/tensorflow/multi_inference.cc``
``servables.tflite_session``                       ``servables/tensorflow/tflite_session.cc`` (through LiteRT)
``servables.warmup``                               ``servables/tensorflow/saved_model_warmup_util.cc``
``util.monitoring``                                TensorFlow's ``core/lib/monitoring`` (counter, sampler)
``util.prometheus_exporter``                       ``util/prometheus_exporter.cc``
=================================================  =========================================================

Deviations from TF Serving are listed in the docstring of the module that has them (search for
"Deviation") and, all together, in the README's table "tf-serving-local: deviations from TF Serving".
TF Serving's own model-server tests run against this server in ``tests/serving/upstream/``.
"""
