"""A loaded SavedModel version and the APIs run on it (TF Serving's
``tensorflow_serving/servables/tensorflow/``)."""
