"""Configuration: the checked-in file, overridden by environment variables."""


import pytest

from neuropipe.config import find_config_file, load_settings
from neuropipe.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(bare_environment):
    """Every test here starts from no configuring variable set."""


def test_file_values_are_read(tmp_path, config_file):
    path = config_file(**{"database.host": "db.lab", "database.port": 3307, "database.backend": "mysql",
                                     "neuropipe.schema_prefix": "lab_", "neuropipe.store": "arrays"})
    settings = load_settings(path)
    assert (settings.host, settings.port, settings.backend, settings.schema_prefix) == ("db.lab", 3307, "mysql", "lab_")
    assert settings.store == tmp_path / "arrays"
    assert not settings.embedded


def test_environment_overrides_the_file(tmp_path, monkeypatch, config_file):
    path = config_file(**{"database.host": "db.lab", "database.backend": "mysql"})
    monkeypatch.setenv("DJ_HOST", "other:5544")
    monkeypatch.setenv("DJ_BACKEND", "postgresql")
    monkeypatch.setenv("DJ_PASS", "secret")
    settings = load_settings(path)
    found = (settings.host, settings.port, settings.backend, settings.password)
    assert found == ("other", 5544, "postgresql", "secret")


def test_no_host_means_embedded(tmp_path, config_file):
    assert load_settings(config_file(**{"database.host": None})).embedded


def test_file_is_found_in_a_parent_folder(tmp_path, monkeypatch, config_file):
    path = config_file()
    (tmp_path / "notebooks").mkdir()
    assert find_config_file(tmp_path / "notebooks") == path
    monkeypatch.setenv("NEUROPIPE_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="missing.json, which is not a file"):
        find_config_file()


def test_other_keys_are_passed_to_datajoint(tmp_path, config_file):
    assert load_settings(config_file(**{"display.limit": 5})).datajoint == {"display.limit": 5}


@pytest.mark.parametrize(
    "values, message",
    [({"database.backend": "oracle"}, "expected one of postgresql, mysql"),
     ({"database.port": "many"}, "expected an integer"),
     ({"database.port": 70000}, "expected 1..65535")],
)
def test_bad_values_are_named(tmp_path, values, message, config_file):
    with pytest.raises(ConfigurationError, match=message):
        load_settings(config_file(**values))


def test_bad_json_is_named(tmp_path):
    path = tmp_path / "dj_local_conf.json"
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="Cannot read configuration file"):
        load_settings(path)


def test_the_checked_in_file_configures_the_embedded_server():
    from pathlib import Path

    settings = load_settings(Path(__file__).resolve().parents[1] / "dj_local_conf.json")
    assert settings.embedded and settings.backend == "postgresql"


def test_boss_settings_come_from_the_file_and_the_environment_and_hide_the_token(tmp_path, monkeypatch, config_file):
    path = config_file(**{"boss.host": "api.bossdb.io", "boss.token": "file-token"})
    settings = load_settings(path)
    assert (settings.boss_host, settings.boss_protocol, settings.boss_token) == ("api.bossdb.io", "https", "file-token")
    monkeypatch.setenv("NEUROPIPE_BOSS_TOKEN", "environment-token")
    monkeypatch.setenv("NEUROPIPE_BOSS_PROTOCOL", "http")
    settings = load_settings(path)
    assert (settings.boss_protocol, settings.boss_token) == ("http", "environment-token")
    assert "environment-token" not in repr(settings) and "boss.host" not in settings.datajoint
