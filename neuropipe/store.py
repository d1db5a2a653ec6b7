"""Where arrays live: a local directory, or an object store (S3 or Google Cloud Storage).

``neuropipe.store`` (or ``NEUROPIPE_STORE``) names the store of every array and model the
pipeline keeps (DataJoint's store ``neuropipe``):

- a directory, ``/data/neuropipe`` (relative paths are relative to the configuration file):
  every worker must see it at the same path, e.g. a shared filesystem on a SLURM cluster;
- ``s3://bucket/prefix``: any S3-compatible service (AWS, MinIO, Ceph, ...). The endpoint,
  region and keys come from ``store.endpoint``, ``store.region``, ``store.access_key`` and
  ``store.secret_key`` of the configuration file or ``NEUROPIPE_STORE_*``; unset, from AWS's
  own variables and credential chain (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
  ``AWS_ACCESS_KEY_ID``, ``~/.aws``, an instance or pod role);
- ``gs://bucket/prefix``: Google Cloud Storage, where ``gcsfs`` is installed, with
  ``store.token`` (a service-account JSON file) or Google's default credentials.

Credentials are never printed: :func:`describe` names the store without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from neuropipe.errors import ConfigurationError

SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}  # URL scheme -> DataJoint's protocol name


def check_url(url: str) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` names a bucket of a supported object store."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(f"neuropipe.store / NEUROPIPE_STORE is {url!r}: expected a directory, "
                                 "s3://bucket/prefix or gs://bucket/prefix.")
    if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError(f"neuropipe.store / NEUROPIPE_STORE is {url!r}: expected "
                                 f"{parts.scheme}://bucket/prefix (a bucket name, then an optional prefix; "
                                 "credentials belong in store.access_key / store.secret_key).")


def is_remote(settings) -> bool:
    """Return whether the store is an object store rather than a directory."""
    return isinstance(settings.store, str) and "://" in settings.store


def protocol(settings) -> str:
    """Return DataJoint's name of the store's protocol: ``file``, ``s3`` or ``gcs``."""
    return SCHEMES[urlsplit(settings.store).scheme] if is_remote(settings) else "file"


def describe(settings) -> str:
    """Return the store's location for messages and logs: its URL and endpoint, never its keys."""
    if protocol(settings) == "s3":
        return f"{settings.store} (endpoint {s3_endpoint(settings)})"
    return str(settings.store)


def s3_endpoint(settings) -> str:
    """Return the S3 API's URL: configured, else AWS's variables, else AWS's endpoint for the region."""
    endpoint = (settings.store_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    if endpoint:
        return endpoint if "://" in endpoint else f"https://{endpoint}"
    region = s3_region(settings)
    return f"https://s3.{region}.amazonaws.com" if region else "https://s3.amazonaws.com"


def s3_region(settings) -> str | None:
    """Return the S3 region: configured, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``."""
    return settings.store_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def datajoint_spec(settings) -> dict:
    """Return the ``datajoint.config['stores']`` entry of the store (credentials included: never log it)."""
    kind = protocol(settings)
    if kind == "file":
        return {"protocol": "file", "location": str(settings.store)}
    parts = urlsplit(settings.store)
    location = parts.path.strip("/")
    if kind == "s3":
        endpoint = s3_endpoint(settings)
        return {"protocol": "s3", "endpoint": endpoint, "bucket": parts.netloc, "location": location,
                "secure": endpoint.startswith("https://"), "access_key": settings.store_access_key,
                "secret_key": settings.store_secret_key}
    return {"protocol": "gcs", "bucket": parts.netloc, "location": location, "token": settings.store_token}


def prepare(settings) -> None:
    """Make the store usable from this process: create a directory, or configure the object store's client.

    The S3 region is handed to every S3 client of this process through fsspec's configuration
    (DataJoint's store settings have no region key); requests are signed for it.

    Raises
    ------
    ConfigurationError
        When only one of the S3 keys is set, or ``gs://`` is asked for without ``gcsfs``.
    """
    kind = protocol(settings)
    if kind == "file":
        Path(settings.store).mkdir(parents=True, exist_ok=True)
        return
    if kind == "s3":
        if bool(settings.store_access_key) != bool(settings.store_secret_key):
            raise ConfigurationError("store.access_key and store.secret_key (NEUROPIPE_STORE_ACCESS_KEY / "
                                     "_SECRET_KEY): set both, or neither to use AWS's own credential chain.")
        _require("s3fs", "s3:// stores")
        region = s3_region(settings)
        if region:
            import fsspec.config

            fsspec.config.conf.setdefault("s3", {})["config_kwargs"] = {"region_name": region}
        return
    _require("gcsfs", "gs:// stores")


def _require(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigurationError(f"{what} need the package {module}: pip install {module}") from None


_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling",
                              "ThrottlingException", "RequestTimeTooSkewed"})


def is_transient(error: BaseException) -> bool:
    """Return whether ``error``, raised by the object store's client, is worth another attempt.

    An unreachable endpoint (connection refused, reset or timed out) and a throttled or failing
    service (HTTP 5xx, ``SlowDown``) are; a missing bucket, a wrong key or a denied request are not.
    """
    module = type(error).__module__ or ""
    if not module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google")):
        return False
    answer = getattr(error, "response", None)
    if isinstance(answer, dict):
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or answer.get("Error", {}).get("Code") in _TRANSIENT_CODES
    name = type(error).__name__
    return any(word in name for word in ("Connect", "Connection", "Timeout", "ServerDisconnected", "ClientPayload"))
