#!/bin/sh
# The entrypoint of the tensorflow/serving image (same flags and variables), for the stand-in image.
# Later flags win, so a --port / --rest_api_port / --model_config_file given to `docker run` applies.
exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
