"""Where model versions come from: a base path on the file system, or an ``s3://`` base path
through a local cache (TF Serving's ``tensorflow_serving/sources/``)."""
