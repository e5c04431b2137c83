"""S3 clients from the amazon provider's ``S3Hook`` (``aws_default``), only for ``s3://`` URIs."""

from __future__ import annotations


def s3_client_for(uri, aws_conn_id: str = "aws_default"):
    """A boto3 S3 client from the Airflow connection when ``uri`` is on S3, else None."""
    if not str(uri).startswith("s3://"):
        return None
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()
