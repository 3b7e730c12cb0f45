"""Secrets kept out of what is logged or shipped: URL userinfo, secret-named keys, and values
of secret environment variables, each replaced by MASK.

Imports nothing of textclf, so the config schema (credential checks) and every logger can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# Environment variables whose values are secrets; a logged value equal to one is masked.
_SECRET_ENV = re.compile(
    r"^(AWS_.*|.*_TOKEN|.*_PASSWORD|.*SECRET.*|.*_API_KEY|.*_ACCESS_KEY.*|MLFLOW_TRACKING_PASSWORD)$",
    re.IGNORECASE,
)
# Config keys (the last part of a dotted name) whose values are secrets whatever they hold.
_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|secret|token|api_?key|access_?key|secret_?key|credentials?)$",
    re.IGNORECASE,
)  # "auth_token", "password": yes; "token_pattern": no
MASK = "***"
_MIN_SECRET_IN_TEXT = 8  # shorter secret values are masked only where a value equals them


def mask_userinfo(text: str) -> str:
    """https://user:pass@host/x -> https://***@host/x (any scheme, anywhere in ``text``)."""
    return _USERINFO.sub(rf"\g<scheme>{MASK}@", text)


def _secret_values(environ: Mapping[str, str]) -> list[str]:
    values = {value for name, value in environ.items() if value and _SECRET_ENV.match(name)}
    return sorted(values, key=len, reverse=True)  # longest first, so no secret is half-masked


def _redact_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(item, secrets) for item in value)
    if not isinstance(value, str):
        return value
    if value in secrets:
        return MASK
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_IN_TEXT and secret in value:
            value = value.replace(secret, MASK)
    return mask_userinfo(value)


def _redact_item(key: Any, value: Any, secrets: list[str]) -> Any:
    if value is not None and _SECRET_KEY.search(str(key).rsplit(".", 1)[-1]):
        return MASK
    return _redact_value(value, secrets)


def redact_secrets(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``params`` (flattened config) with secrets masked, for logging to MLflow.

    Masks values of keys named like secrets (``*password*``, ``*token*``, ...), values equal
    to (or containing) the value of a secret environment variable (AWS_*, *_TOKEN,
    *_PASSWORD, *SECRET*, *_API_KEY, MLFLOW_TRACKING_PASSWORD), and URL userinfo."""
    secrets = _secret_values(os.environ if environ is None else environ)
    return {key: _redact_item(key, value, secrets) for key, value in params.items()}


def redact_config(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The nested config with the same secrets masked as ``redact_secrets`` masks in the flat
    params: for config.yaml files that travel with a checkpoint or a shipped model."""
    secrets = _secret_values(os.environ if environ is None else environ)

    def redacted(node: Mapping[str, Any]) -> dict[str, Any]:
        return {
            key: redacted(value) if isinstance(value, Mapping) else _redact_item(key, value, secrets)
            for key, value in node.items()
        }

    return redacted(config)
