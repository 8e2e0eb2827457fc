"""The one rule for showing a URL: credentials removed. Used by every log line (logs.py's formatter) and every
error a job returns (worker.py), so a signed URL or a `user:password@` never leaves the worker."""

from __future__ import annotations

import re

REDACTED = "REDACTED"

# a query or fragment parameter whose name contains one of these carries a secret: X-Amz-Signature,
# X-Amz-Credential, X-Amz-Security-Token, sig (Azure SAS), token, access_token, key, api_key, password...
SECRET_PARAMETER_PARTS = ("sig", "token", "key", "secret", "password", "passwd", "credential", "auth", "session")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_PARAMETER = re.compile(r"([?&;#])([^=&;#]*)=([^&;#]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")


def redact_url(url: str) -> str:
    """`url` with its user:password@ and the values of its secret-looking query parameters replaced by REDACTED."""
    url = _USERINFO.sub(rf"\1{REDACTED}@", url)
    start = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
    if start < 0:
        return url
    return url[:start] + _PARAMETER.sub(_redact_parameter, url[start:])


def redact_text(text: str) -> str:
    """Every URL inside `text` (a log line, an error message, a traceback) passed through `redact_url`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _redact_parameter(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if value and any(part in name.lower() for part in SECRET_PARAMETER_PARTS):
        value = REDACTED
    return f"{separator}{name}={value}"
