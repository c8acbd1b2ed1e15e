"""Credentials in tracking URIs never reach files or logs."""

import pytest

from segpipe.tracking.redact import redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://alice:s3cret@mlflow.example.com:5000/api", "https://***@mlflow.example.com:5000/api"),
        (
            "https://mlflow.example.com/?token=abc123&experiment=7",
            "https://mlflow.example.com/?token=***&experiment=7",
        ),
        (
            "postgresql://user:pw@db:5432/mlflow?sslmode=require&password=pw",
            "postgresql://***@db:5432/mlflow?sslmode=require&password=***",
        ),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_credentials_are_masked_and_everything_else_kept(uri, expected):
    assert redact_uri(uri) == expected
    assert "s3cret" not in redact_uri(uri) and "abc123" not in redact_uri(uri)
