"""FileWatcher against real files, with the clock given explicitly (no timers)."""

from __future__ import annotations

import os
import types

import pytest

from legatus.config_subscription.filesystem.watcher import FileWatcher


def _write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _replace(path, text: str) -> None:
    """Write a sibling and rename it over ``path`` (what editors and Envoy's docs do)."""
    tmp = f"{path}.tmp"
    _write(tmp, text)
    os.replace(tmp, path)


def _swap_symlink(link, target) -> None:
    tmp = f"{link}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, link)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yaml"
    _write(path, "version_info: '1'\n")
    return path


def test_nothing_changed_reports_nothing(config):
    watcher = FileWatcher(str(config), debounce=0)
    assert watcher.read(0.0) == b"version_info: '1'\n"
    assert not watcher.poll(0.1)
    assert not watcher.poll(10.0)  # past the racy window too


def test_rename_over_the_file(config):
    watcher = FileWatcher(str(config), debounce=0)
    watcher.read(0.0)
    _replace(config, "version_info: '2'\n")
    assert watcher.poll(0.1)
    assert watcher.read(0.1) == b"version_info: '2'\n"
    assert not watcher.poll(0.2)


def test_in_place_rewrite_of_the_same_size(config):
    watcher = FileWatcher(str(config), debounce=0)
    watcher.read(0.0)
    inode = os.stat(config).st_ino
    _write(config, "version_info: '9'\n")  # same inode, same size
    assert os.stat(config).st_ino == inode
    assert watcher.poll(0.1)


def test_touch_counts_as_a_change(config):
    watcher = FileWatcher(str(config), debounce=0)
    watcher.read(0.0)
    st = os.stat(config)
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert watcher.poll(5.0)


def _coarse_stat(path):
    """os.stat on a filesystem whose timestamps never move within the test (coarse clock)."""
    st = os.stat(path)
    return types.SimpleNamespace(
        st_dev=st.st_dev, st_ino=st.st_ino, st_size=st.st_size, st_mtime_ns=0, st_ctime_ns=0
    )


def test_same_size_rewrite_invisible_to_stat_is_caught_by_content(config):
    watcher = FileWatcher(str(config), debounce=0, racy_window=2.0, stat=_coarse_stat)
    watcher.read(0.0)
    _write(config, "version_info: '7'\n")
    assert watcher.poll(0.5)
    assert watcher.read(0.5) == b"version_info: '7'\n"
    assert not watcher.poll(0.6)


def test_content_change_seen_in_the_racy_window_survives_its_end(config):
    watcher = FileWatcher(str(config), debounce=1.0, racy_window=0.5, stat=_coarse_stat)
    watcher.read(0.0)
    _write(config, "version_info: '7'\n")
    assert not watcher.poll(0.4)  # seen, not settled
    assert not watcher.poll(0.9)  # the window is over; the change is still pending
    assert watcher.poll(1.5)


def test_burst_of_writes_settles_once(config):
    watcher = FileWatcher(str(config), debounce=0.1)
    watcher.read(0.0)
    for step, now in enumerate((0.02, 0.04, 0.06, 0.08)):
        _replace(config, f"version_info: 'burst-{step}'\n")
        assert not watcher.poll(now)
    assert not watcher.poll(0.15)  # 0.07 s of quiet
    assert watcher.poll(0.19)
    assert watcher.read(0.19) == b"version_info: 'burst-3'\n"
    assert not watcher.poll(0.5)


def test_symlinked_file_retargeted(tmp_path):
    a, b, link = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "config.yaml"
    _write(a, "version_info: a\n")
    _write(b, "version_info: b\n")
    os.symlink(a, link)
    watcher = FileWatcher(str(link), debounce=0)
    watcher.read(0.0)
    _swap_symlink(link, b)
    assert watcher.poll(0.1)
    assert watcher.read(0.1) == b"version_info: b\n"


def test_symlinked_directory_on_the_path_swapped(tmp_path):
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "config.yaml", f"version_info: {name}\n")
    os.symlink("v1", tmp_path / "current")
    watcher = FileWatcher(str(tmp_path / "current" / "config.yaml"), debounce=0)
    watcher.read(0.0)
    _swap_symlink(tmp_path / "current", "v2")
    assert watcher.poll(0.1)
    assert watcher.read(0.1) == b"version_info: v2\n"


def test_watched_directory_sees_a_move_into_it(tmp_path, config):
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    watcher = FileWatcher(str(config), watched_directory=str(trigger), debounce=0)
    watcher.read(0.0)
    assert not watcher.poll(0.1)
    _write(tmp_path / "flag", "x")
    os.replace(tmp_path / "flag", trigger / "flag")
    assert watcher.poll(0.2)


def test_missing_file_waits_for_its_return(config):
    watcher = FileWatcher(str(config), debounce=0)
    watcher.read(0.0)
    os.unlink(config)
    assert not watcher.poll(0.1)
    assert not watcher.poll(5.0)
    _write(config, "version_info: back\n")
    assert watcher.poll(5.1)


def test_read_of_a_missing_file_raises_and_the_file_is_found_later(tmp_path):
    path = tmp_path / "late.yaml"
    watcher = FileWatcher(str(path), debounce=0)
    with pytest.raises(FileNotFoundError):
        watcher.read(0.0)
    assert not watcher.poll(0.1)
    _write(path, "version_info: late\n")
    assert watcher.poll(0.2)
    assert watcher.read(0.2) == b"version_info: late\n"


def test_negative_debounce_is_refused(config):
    with pytest.raises(ValueError, match="debounce"):
        FileWatcher(str(config), debounce=-1)
