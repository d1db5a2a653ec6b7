"""Configuration: one file, overridden by environment variables.

neuropipe reads its settings in this order, later sources winning:

1. built-in defaults;
2. the configuration file ``dj_local_conf.json``: the path in ``NEUROPIPE_CONFIG``, or the
   first ``dj_local_conf.json`` found in the current directory or one of its parents
   (DataJoint 2 no longer reads this file itself, so neuropipe does);
3. environment variables: ``DJ_HOST``, ``DJ_PORT``, ``DJ_USER``, ``DJ_PASS``, ``DJ_BACKEND``
   (as DataJoint 2 defines them), ``NEUROPIPE_SCHEMA_PREFIX``, ``NEUROPIPE_STORE`` and
   ``NEUROPIPE_STORE_ENDPOINT``/``_REGION``/``_ACCESS_KEY``/``_SECRET_KEY``/``_TOKEN`` (an object store; see
   :mod:`neuropipe.store`), ``NEUROPIPE_BOSS_HOST``/``_PROTOCOL``/``_TOKEN`` (the Boss API of ``bossdb://``
   sources) and ``NEUROPIPE_DASHBOARD_TOKEN`` (what ``neuropipe dashboard`` asks of a request that acts).

An empty or null ``database.host`` means "no server configured": neuropipe then starts its
embedded PostgreSQL (see :mod:`neuropipe.embedded`).  Keys of the file that neuropipe does
not own (``jobs.*``, ``display.*``, ``loglevel``, ...) are handed to ``datajoint.config``
unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from neuropipe.errors import ConfigurationError

CONFIG_FILENAME = "dj_local_conf.json"
BACKENDS = ("postgresql", "mysql")
_ENVIRONMENT = {
    "DJ_HOST": "host",
    "DJ_PORT": "port",
    "DJ_USER": "user",
    "DJ_PASS": "password",
    "DJ_BACKEND": "backend",
    "NEUROPIPE_SCHEMA_PREFIX": "schema_prefix",
    "NEUROPIPE_STORE": "store",
    "NEUROPIPE_STORE_ENDPOINT": "store_endpoint",
    "NEUROPIPE_STORE_REGION": "store_region",
    "NEUROPIPE_STORE_ACCESS_KEY": "store_access_key",
    "NEUROPIPE_STORE_SECRET_KEY": "store_secret_key",
    "NEUROPIPE_STORE_TOKEN": "store_token",
    "NEUROPIPE_BOSS_HOST": "boss_host",
    "NEUROPIPE_BOSS_PROTOCOL": "boss_protocol",
    "NEUROPIPE_BOSS_TOKEN": "boss_token",
    "NEUROPIPE_ZARR_ABOVE_MB": "zarr_above_mb",
    "NEUROPIPE_DASHBOARD_TOKEN": "dashboard_token",
}
_FILE_KEYS = {
    "database.host": "host",
    "database.port": "port",
    "database.user": "user",
    "database.password": "password",
    "database.backend": "backend",
    "neuropipe.schema_prefix": "schema_prefix",
    "neuropipe.store": "store",
    "store.endpoint": "store_endpoint",
    "store.region": "store_region",
    "store.access_key": "store_access_key",
    "store.secret_key": "store_secret_key",
    "store.token": "store_token",
    "boss.host": "boss_host",
    "boss.protocol": "boss_protocol",
    "boss.token": "boss_token",
    "neuropipe.zarr_above_mb": "zarr_above_mb",
    "dashboard.token": "dashboard_token",
}


ROOT_DATA_HOME = Path("/var/lib/neuropipe")


def data_home() -> Path:
    """Return neuropipe's data directory: embedded server, array store, demo samples.

    ``$NEUROPIPE_HOME`` if set; else ``/var/lib/neuropipe`` under root (the embedded server
    runs as an unprivileged user there, and ``/root`` is closed to it); else
    ``$XDG_DATA_HOME/neuropipe`` (default ``~/.local/share/neuropipe``).
    """
    if os.environ.get("NEUROPIPE_HOME"):
        return Path(os.environ["NEUROPIPE_HOME"]).expanduser().absolute()
    if os.geteuid() == 0:
        return ROOT_DATA_HOME
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).absolute() / "neuropipe"


@dataclass(frozen=True)
class Settings:
    """Resolved neuropipe settings.

    Attributes
    ----------
    host : str or None
        Database server host; None starts the embedded PostgreSQL.
    port : int or None
        Server port; None means the backend's default (5432 or 3306).
    user, password : str or None, str
        Database credentials.
    backend : {'postgresql', 'mysql'}
        DataJoint 2 backend.
    schema_prefix : str
        Prefix of every schema the bundled pipeline creates (``neuropipe_volume``, ...).
    store : Path or str
        Where arrays and models are kept: a directory (a Path), or an object store URL (a str)
        ``s3://bucket/prefix`` or ``gs://bucket/prefix`` (:mod:`neuropipe.store`).
    store_endpoint, store_region : str or None
        The S3 API's address (e.g. ``http://127.0.0.1:9000`` for MinIO; default AWS's for the
        region) and region. Unset, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` and
        ``AWS_REGION``/``AWS_DEFAULT_REGION`` are used, as AWS's own tools do.
    store_access_key, store_secret_key, store_token : str or None
        Credentials of the object store (S3 keys; for ``gs://``, a service-account JSON file
        or ``google_default``). Unset, the provider's own chain is used (``AWS_ACCESS_KEY_ID``,
        ``~/.aws``, an instance or pod role). Never shown (not in ``repr``, logs or errors).
    source : Path or None
        The configuration file that was read, if any.
    datajoint : dict
        Further ``datajoint.config`` keys taken from the file.
    boss_host, boss_protocol, boss_token : str or None
        The Boss API server ``bossdb://`` sources are read from (e.g. ``api.bossdb.io``,
        ``https``) and its token; with no host, intern's own configuration is used
        (``~/.intern/intern.cfg`` or ``INTERN_PROTOCOL``/``INTERN_HOST``/``INTERN_TOKEN``).
        The token is never shown (not in ``repr``, logs or errors).
    zarr_above_mb : float
        Imported volumes larger than this many megabytes are stored as chunked zarr arrays
        (``Volume.image_zarr``), smaller ones as one ``.npy`` (``Volume.image``).
    """

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str = ""
    backend: str = "postgresql"
    schema_prefix: str = "neuropipe_"
    store: Path | str = field(default_factory=lambda: data_home() / "store")
    store_endpoint: str | None = None
    store_region: str | None = None
    store_access_key: str | None = field(default=None, repr=False)
    store_secret_key: str | None = field(default=None, repr=False)
    store_token: str | None = field(default=None, repr=False)
    source: Path | None = None
    datajoint: dict = field(default_factory=dict)
    boss_host: str | None = None
    boss_protocol: str = "https"
    boss_token: str | None = field(default=None, repr=False)
    zarr_above_mb: float = 256.0
    dashboard_token: str | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        """bool: True when no server is configured and the embedded PostgreSQL is used."""
        return not self.host

    def with_overrides(self, **changes: Any) -> "Settings":
        """Return a copy with some settings replaced, validated."""
        return _validated(replace(self, **changes))


def find_config_file(start: Path | None = None) -> Path | None:
    """Return the configuration file to read, or None.

    ``NEUROPIPE_CONFIG`` names it explicitly; otherwise the first ``dj_local_conf.json`` in
    ``start`` (default: the working directory) or one of its parents is used.
    """
    explicit = os.environ.get("NEUROPIPE_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"NEUROPIPE_CONFIG names {path}, which is not a file.")
        return path
    current = (start or Path.cwd()).resolve()
    for folder in (current, *current.parents):
        if (folder / CONFIG_FILENAME).is_file():
            return folder / CONFIG_FILENAME
    return None


def load_settings(path: Path | None = None) -> Settings:
    """Read defaults, the configuration file and the environment into :class:`Settings`.

    Parameters
    ----------
    path : Path, optional
        Configuration file to read. Default: :func:`find_config_file`.

    Returns
    -------
    Settings

    Raises
    ------
    ConfigurationError
        If the file is not valid JSON or a value has the wrong type.
    """
    path = path or find_config_file()
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if path is not None:
        for key, value in _read_json(path).items():
            if key in _FILE_KEYS:
                if value is not None:
                    values[_FILE_KEYS[key]] = value
            else:
                extra[key] = value
    for variable, name in _ENVIRONMENT.items():
        if os.environ.get(variable) not in (None, ""):
            values[name] = os.environ[variable]
    if "store" in values:
        values["store"] = _resolve_store(values["store"], path)
    return _validated(Settings(**values, source=path, datajoint=extra))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"Cannot read configuration file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigurationError(f"Configuration file {path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _resolve_store(value, config_file: Path | None) -> Path | str:
    """Return a store directory as an absolute Path (relative to the file that named it), a URL as a str."""
    text = str(value)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        return text
    store = Path(text).expanduser()
    if not store.is_absolute() and config_file is not None:
        store = config_file.parent / store
    return store


def _validated(settings: Settings) -> Settings:
    if settings.backend not in BACKENDS:
        raise ConfigurationError(
            f"database.backend / DJ_BACKEND is {settings.backend!r}; expected one of {', '.join(BACKENDS)}."
        )
    port = settings.port
    if port is not None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ConfigurationError(f"database.port / DJ_PORT is {port!r}; expected an integer.") from None
        if not 0 < port < 65536:
            raise ConfigurationError(f"database.port / DJ_PORT is {port}; expected 1..65535.")
    try:
        zarr_above_mb = float(settings.zarr_above_mb)
    except (TypeError, ValueError):
        zarr_above_mb = -1.0
    if not zarr_above_mb >= 0:
        raise ConfigurationError(f"neuropipe.zarr_above_mb / NEUROPIPE_ZARR_ABOVE_MB is {settings.zarr_above_mb!r}; "
                                 "expected a non-negative number of megabytes.")
    if "://" in str(settings.store):
        from neuropipe.store import check_url

        check_url(str(settings.store))
    if ":" in (settings.host or ""):
        host, _, host_port = settings.host.rpartition(":")
        return _validated(replace(settings, host=host, port=host_port))
    return replace(settings, port=port, store=_store_value(settings.store), password=str(settings.password or ""),
                   zarr_above_mb=zarr_above_mb)


def _store_value(store) -> Path | str:
    return store if isinstance(store, str) and "://" in store else Path(store)
