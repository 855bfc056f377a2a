from pathlib import Path

import pytest

from infra.settings import RemoteAE, load_settings


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "chronicle.toml"
    config.write_text('http_port = 7000\ndimse_port = 7001\nae_title = "FROMFILE"\n')
    env = {"CHRONICLE_CONFIG": str(config), "CHRONICLE_DIMSE_PORT": "7101"}
    s = load_settings({"ae_title": "FLAG", "http_port": None}, environ=env)
    assert s.ae_title == "FLAG"  # flag beats file
    assert s.dimse_port == 7101  # env beats file
    assert s.http_port == 7000  # file beats default
    assert s.max_associations == 64  # default


def test_data_dir_derives_absolute_urls(tmp_path: Path) -> None:
    s = load_settings({"data_dir": str(tmp_path)}, environ={})
    assert s.log_url == f"sqlite://{tmp_path}/log.db"
    assert s.blob_url == f"file://{tmp_path}/blobs"
    assert s.index_url == f"chdb://{tmp_path}/index"


def test_repeated_options_have_a_comma_form() -> None:
    s = load_settings({}, environ={"CHRONICLE_REMOTE_AES": "A@h:1, B@10.0.0.2:104"})
    assert s.remotes == [RemoteAE("A", "h", 1), RemoteAE("B", "10.0.0.2", 104)]


@pytest.mark.parametrize("bad", ["nohost", "A@h", "A@h:x", "@h:1", "WAYTOOLONGAETITLE1@h:1"])
def test_bad_remote_ae_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        load_settings({"remote_aes": [bad]}, environ={})
