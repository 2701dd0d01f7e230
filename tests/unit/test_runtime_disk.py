"""Disk runtime layers: how a tree reads into keys (each rule as the real Envoy 1.40 showed it),
and when a change to the tree or its symlink root asks for a reload."""

from __future__ import annotations

import os

import pytest

from legatus.runtime_disk import (
    ChangeDetector,
    DiskLayerError,
    file_value,
    read_disk_layer,
    root_stamp,
    tree_stamp,
    watch_error,
)


def write(base, relative: str, text: str) -> None:
    path = base / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def raws(values) -> dict[str, str]:
    return {key: entry.raw for key, entry in values.items()}


# Reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("  hello  \n", "  hello"),  # leading whitespace stays, trailing goes
        ("# comment\nvalue\n# trailing\n", "value\n"),  # a kept line keeps its newline
        ("line1\nline2\n  \n", "line1\nline2\n"),
        ("tab\t\r\n", "tab"),
        ("no newline", "no newline"),
        ("", ""),
        ("\n\n", ""),
        ("a\n\nb", "a\nb"),  # empty lines dropped
        ("a\nb\na", "ab\na"),  # a line equal to the last one is trimmed like it (Envoy)
        ("# only a comment\n", ""),
    ],
)
def test_file_values_as_envoy_makes_them(text, value):
    assert file_value(text) == value


def test_a_tree_reads_into_dotted_keys(tmp_path):
    write(tmp_path, "key1", "  hello  \n")
    write(tmp_path, "a/b/c", "50\n")
    write(tmp_path, "x.y", "dotted")
    write(tmp_path, ".hidden", "hid")  # hidden files and directories are keys too
    write(tmp_path, ".hdir/y", "x")
    write(tmp_path, "empty", "")
    write(tmp_path, "commented", "# comment\nvalue\n# trailing\n")
    values = read_disk_layer(str(tmp_path))
    assert raws(values) == {
        "key1": "  hello",
        "a.b.c": "50",
        "x.y": "dotted",
        ".hidden": "hid",
        ".hdir.y": "x",
        "empty": "",
        "commented": "value\n",
    }
    assert values["a.b.c"].uint == 50


def test_values_read_as_yaml_like_admin_values(tmp_path):
    """What Envoy's ``runtime_fraction`` routes made of these files (default 0 %)."""
    files = {
        "int100": ("100", True),
        "sp100": (" 100 \n", True),
        "strtrue": ("true", False),
        "fracyaml": ("numerator: 100", True),
        "fracflow": ("{numerator: 100}", True),
        "cm100": ("# c\n100\n", True),
        "twolines": ("100\n0", False),
        "sci": ("1e2", True),
        "hex": ("0x64", True),
        "plus": ("+100", True),
        "empty": ("", False),
    }
    for name, (text, _) in files.items():
        write(tmp_path, name, text)
    values = read_disk_layer(str(tmp_path))
    for name, (_, always) in files.items():
        entry = values[name]
        enabled = entry.fraction is not None and entry.fraction[0] >= entry.fraction[1]
        enabled = enabled or (entry.uint is not None and entry.uint >= 100)
        assert enabled is always, name
    assert values["strtrue"].boolean is True


def test_symlinks_are_followed_and_other_kinds_skipped(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "file", "linked")
    write(elsewhere, "dir/inner", "7")
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "link_file").symlink_to(elsewhere / "file")
    (layer / "link_dir").symlink_to(elsewhere / "dir")
    os.mkfifo(layer / "fifo")  # reading it would block: Envoy skips it
    assert raws(read_disk_layer(str(layer))) == {"link_file": "linked", "link_dir.inner": "7"}


def test_a_missing_directory_is_no_layer(tmp_path):
    assert read_disk_layer(str(tmp_path / "missing")) is None
    write(tmp_path, "file", "x")
    assert read_disk_layer(str(tmp_path / "file")) is None  # not a directory


def test_a_dangling_symlink_fails_the_read(tmp_path):
    write(tmp_path, "ok", "1")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DiskLayerError, match=rf"^Invalid path: {tmp_path}/dangling$"):
        read_disk_layer(str(tmp_path))


def test_text_that_is_not_yaml_fails_the_read(tmp_path):
    write(tmp_path, "bad", "{")
    with pytest.raises(DiskLayerError, match=r"/bad: .*line 1"):
        read_disk_layer(str(tmp_path))


def test_directories_nest_at_most_sixteen_deep(tmp_path):
    deepest = "/".join(f"d{i}" for i in range(1, 16))  # the layer's directory is the 1st
    write(tmp_path, f"{deepest}/leaf", "zz")
    key = ".".join(f"d{i}" for i in range(1, 16)) + ".leaf"
    assert raws(read_disk_layer(str(tmp_path))) == {key: "zz"}
    write(tmp_path, f"{deepest}/d16/leaf", "too deep")
    with pytest.raises(DiskLayerError, match=r"^Walk recursion depth exceeded 16$"):
        read_disk_layer(str(tmp_path))


def test_a_symlink_loop_ends_at_the_depth_limit(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path)
    with pytest.raises(DiskLayerError, match="depth exceeded"):
        read_disk_layer(str(tmp_path))


def test_paths_under_proc_are_refused(tmp_path):
    (tmp_path / "proc").symlink_to("/proc/self")
    with pytest.raises(DiskLayerError, match=rf"^Invalid path: {tmp_path}/proc$"):
        read_disk_layer(str(tmp_path))


def test_the_watch_needs_the_roots_parent(tmp_path):
    assert watch_error(str(tmp_path / "current")) is None
    assert watch_error("/current") is None
    assert watch_error(str(tmp_path / "nope" / "current")) == (
        f"unable to add filesystem watch for file {tmp_path}/nope/current: "
        "No such file or directory"
    )


# Noticing changes ----------------------------------------------------------------------------


def swap(root, target) -> None:
    """The atomic symlink swap operators use: a new link moved onto the root's name."""
    new = root.parent / f".{root.name}.new"
    new.symlink_to(target)
    os.replace(new, root)


def test_a_swapped_root_is_a_new_stamp_and_a_rewritten_file_changes_the_tree(tmp_path):
    write(tmp_path, "v1/k", "1")
    write(tmp_path, "v2/k", "1")
    root = tmp_path / "current"
    root.symlink_to(tmp_path / "v1")
    before = root_stamp(str(root)), tree_stamp([f"{root}/"])
    swap(root, tmp_path / "v2")
    after = root_stamp(str(root)), tree_stamp([f"{root}/"])
    assert before[0] != after[0] and before[1] != after[1]
    assert root_stamp(str(tmp_path / "missing")) is None
    tree = tree_stamp([f"{root}/"])
    assert tree_stamp([f"{root}/"]) == tree  # nothing changed
    write(tmp_path, "v2/k", "22")
    assert tree_stamp([f"{root}/"]) != tree
    tree = tree_stamp([f"{root}/"])
    write(tmp_path, "v2/new/k", "3")
    assert tree_stamp([f"{root}/"]) != tree


def test_a_swap_reloads_at_once_once_per_disk_layer_under_the_root():
    detector = ChangeDetector({"/r/current": 2, "/other/current": 1}, {"/r/current": 1}, ("t0",))
    assert detector.poll({"/r/current": 1}, ("t0",)) == 0
    assert detector.poll({"/r/current": 2}, ("t1",)) == 2  # swapped: no waiting
    assert detector.poll({"/r/current": 2}, ("t1",)) == 0


def test_an_in_place_change_reloads_once_it_has_settled():
    detector = ChangeDetector({"/r/current": 1}, {"/r/current": 1}, ("t0",))
    assert detector.poll({"/r/current": 1}, ("t1",)) == 0  # changed: wait a poll
    assert detector.poll({"/r/current": 1}, ("t2",)) == 0  # still changing
    assert detector.poll({"/r/current": 1}, ("t2",)) == 1  # settled
    assert detector.poll({"/r/current": 1}, ("t2",)) == 0
    assert detector.poll({"/r/current": 1}, ("t3",)) == 0
    assert detector.poll({"/r/current": 1}, ("t2",)) == 0  # back as it was loaded: nothing
    assert detector.poll({"/r/current": 1}, ("t2",)) == 0
