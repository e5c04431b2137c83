"""A loaded model version (SavedModel, or TFLite with ``--prefer_tflite_model``) and the APIs run
on it (TF Serving's ``tensorflow_serving/servables/tensorflow/``)."""
