"""Live reload keeps watching: a vanished directory, a swapped symlink, a deleted file."""

from __future__ import annotations

import logging
import os
import shutil
import smtplib

from conftest import message
from test_reload import REJECT_MAIL, wait_until

from mailsink.testing import RunningSink


def refuses_mail(sink: RunningSink) -> bool:
    with smtplib.SMTP(sink.host, sink.port) as client:
        try:
            client.sendmail("a@x.test", ["b@x.test"], message())
        except smtplib.SMTPSenderRefused:
            return True
    return False


def test_a_removed_and_recreated_directory_is_watched_again(tmp_path, caplog):
    directory = tmp_path / "conf"
    directory.mkdir()
    config = directory / "mailsink.toml"
    config.write_text("")
    logged = caplog.at_level(logging.INFO, logger="mailsink")
    with logged, RunningSink(tmp_path / "mail.db", config=config) as sink:
        shutil.rmtree(directory)
        wait_until(lambda: sink.watcher.error is not None)
        assert "was deleted; keeping the current settings" in sink.watcher.error
        directory.mkdir()
        config.write_text(REJECT_MAIL)
        wait_until(lambda: sink.watcher.reloads == 1)
        assert refuses_mail(sink)
        config.write_text("")  # and later edits too
        wait_until(lambda: sink.watcher.reloads == 2)
        assert not refuses_mail(sink)
        assert sink.watcher.error is None
    assert f"config file {config} was deleted; keeping the current settings" in caplog.text
    assert "stopped watching" not in caplog.text


def test_a_deleted_file_is_logged_and_its_return_reloads(tmp_path, caplog):
    config = tmp_path / "mailsink.toml"
    config.write_text(REJECT_MAIL)
    logged = caplog.at_level(logging.INFO, logger="mailsink")
    with logged, RunningSink(tmp_path / "mail.db", config=config) as sink:
        config.unlink()
        wait_until(lambda: "was deleted" in caplog.text)
        assert refuses_mail(sink)  # the settings stay
        config.write_text("")
        wait_until(lambda: sink.watcher.reloads == 1)
        assert not refuses_mail(sink)
    assert f"config file {config} was deleted; keeping the current settings" in caplog.text
    assert f"config file {config} is back; reloading it" in caplog.text


def test_a_symlink_pointed_elsewhere_and_its_new_target_are_followed(tmp_path):
    (tmp_path / "links").mkdir()
    (tmp_path / "files").mkdir()
    first, second = tmp_path / "files" / "first.toml", tmp_path / "files" / "second.toml"
    first.write_text("")
    second.write_text(REJECT_MAIL)
    config = tmp_path / "links" / "mailsink.toml"
    config.symlink_to(os.path.relpath(first, config.parent))
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        swap = config.with_name("swap")
        swap.symlink_to(second)
        os.replace(swap, config)  # the link now leads to another file, in another directory
        wait_until(lambda: sink.watcher.reloads == 1)
        assert refuses_mail(sink)
        second.write_text("")  # an edit of the new target
        wait_until(lambda: sink.watcher.reloads == 2)
        assert not refuses_mail(sink)


def test_a_swapped_directory_link_is_followed(tmp_path):
    # What a Kubernetes ConfigMap volume does: the file is a link through `..data`, a link to a
    # versioned directory; an update swaps `..data` and removes the old directory.
    root = tmp_path / "config"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "mailsink.toml").write_text("")
    (root / "..data").symlink_to("v1")
    config = root / "mailsink.toml"
    config.symlink_to("..data/mailsink.toml")
    with RunningSink(tmp_path / "mail.db", config=config) as sink:
        (root / "v2").mkdir()
        (root / "v2" / "mailsink.toml").write_text(REJECT_MAIL)
        (root / "..data_tmp").symlink_to("v2")
        os.replace(root / "..data_tmp", root / "..data")
        shutil.rmtree(root / "v1")
        wait_until(lambda: sink.watcher.reloads >= 1 and sink.server.settings.rules)
        assert refuses_mail(sink)
        (root / "v2" / "mailsink.toml").write_text("")
        wait_until(lambda: not sink.server.settings.rules)


def test_watchfiles_own_change_lines_are_not_logged(tmp_path, caplog):
    config = tmp_path / "mailsink.toml"
    config.write_text("")
    with caplog.at_level(logging.INFO), RunningSink(tmp_path / "mail.db", config=config) as sink:
        config.write_text(REJECT_MAIL)
        wait_until(lambda: sink.watcher.reloads == 1)
    assert "config reloaded from" in caplog.text
    assert not [record for record in caplog.records if record.name.startswith("watchfiles")]
