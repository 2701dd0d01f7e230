"""FilesystemSubscription on real files in tmp_path, with short poll intervals."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest
from envoy.config.core.v3 import config_source_pb2
from envoy.service.discovery.v3 import discovery_pb2

from legatus.config.errors import ConfigError
from legatus.config.subscription import UpdateFailureReason
from legatus.config_subscription import decode
from legatus.config_subscription.filesystem import FilesystemSubscription
from legatus.config_subscription.rest.response import UnknownFieldPolicy
from legatus.config_subscription.stats import SubscriptionStats
from legatus.stats.store import Store
from tests.support.xds_server import RecordingOwner

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
FAST = {"poll_interval": 0.01, "debounce": 0.03}


def cds_yaml(version: str, *names: str, extra: str = "") -> str:
    lines = [f"version_info: '{version}'", "resources:"]
    for name in names:
        lines += [f"- '@type': {CLUSTER_TYPE}", f"  name: {name}", "  connect_timeout: 1s"]
        if extra:
            lines.append(f"  {extra}")
    if not names:
        lines[-1] = "resources: []"
    return "\n".join(lines) + "\n"


def write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def replace(path, text: str) -> None:
    tmp = f"{path}.tmp"
    write(tmp, text)
    os.replace(tmp, path)


async def eventually(condition, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class Harness:
    def __init__(self) -> None:
        self.store = Store()
        self.owner = RecordingOwner()
        self.stats = SubscriptionStats(self.store.scope("cluster_manager.cds."))
        self.subscriptions: list[FilesystemSubscription] = []

    def subscribe(self, path, type_url: str = CLUSTER_TYPE, **options) -> FilesystemSubscription:
        for key, value in FAST.items():
            options.setdefault(key, value)
        sub = FilesystemSubscription(
            type_url, path=str(path), callbacks=self.owner, stats=self.stats, **options
        )
        self.subscriptions.append(sub)
        return sub

    def stat(self, name: str):
        return self.store.value(f"cluster_manager.cds.{name}")

    @property
    def versions(self) -> list[str]:
        return [u.version_info for u in self.owner.updates]


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    for sub in harness.subscriptions:
        sub.close()


@pytest.fixture
def cds(tmp_path):
    path = tmp_path / "cds.yaml"
    write(path, cds_yaml("1", "a", "b"))
    return path


async def test_start_loads_the_file_as_a_state_of_the_world_update(h, cds):
    h.subscribe(cds).start([])
    [update] = h.owner.updates  # delivered inside start(), as Envoy does
    assert update.type_url == CLUSTER_TYPE
    assert update.state_of_the_world
    assert update.version_info == "1"
    assert [r.name for r in update.added] == ["a", "b"]
    assert update.added[0].resource.connect_timeout.seconds == 1
    assert update.removed == ()
    assert (h.stat("update_attempt"), h.stat("update_success")) == (1, 1)
    assert h.stat("version_text") == "1"
    assert h.stat("update_failure") == 0


async def test_missing_path_is_a_config_error_as_in_envoy(tmp_path, h):
    with pytest.raises(ConfigError, match="paths must refer to an existing path in the system"):
        h.subscribe(tmp_path / "nope.yaml")


async def test_missing_watched_directory_is_a_config_error(tmp_path, h, cds):
    with pytest.raises(ConfigError, match=r"unable to add filesystem watch for file .*nodir/"):
        h.subscribe(cds, watched_directory=str(tmp_path / "nodir"))


async def test_file_gone_at_start_fails_then_loads_when_it_appears(h, cds):
    sub = h.subscribe(cds)
    os.unlink(cds)
    sub.start([])
    [(reason, error)] = h.owner.failures
    assert reason is UpdateFailureReason.CONNECTION_FAILURE
    assert str(cds) in str(error)
    assert h.stat("update_failure") == 1
    assert sub.last_failure is not None and str(cds) in sub.last_failure.details
    replace(cds, cds_yaml("2", "c"))
    await eventually(lambda: h.owner.updates)
    assert h.versions == ["2"]
    assert sub.last_failure is None


async def test_rename_over_reloads(h, cds):
    h.subscribe(cds).start([])
    replace(cds, cds_yaml("2", "a"))
    await eventually(lambda: h.versions == ["1", "2"])
    assert [r.name for r in h.owner.updates[-1].added] == ["a"]
    assert h.stat("update_success") == 2


async def test_in_place_edit_reloads(h, cds):
    h.subscribe(cds).start([])
    inode = os.stat(cds).st_ino
    write(cds, cds_yaml("2", "a", "b"))
    assert os.stat(cds).st_ino == inode
    await eventually(lambda: h.versions == ["1", "2"])


async def test_symlink_swap_of_the_file_reloads(tmp_path, h):
    write(tmp_path / "one.yaml", cds_yaml("one", "a"))
    write(tmp_path / "two.yaml", cds_yaml("two", "b"))
    link = tmp_path / "cds.yaml"
    os.symlink("one.yaml", link)
    h.subscribe(link).start([])
    os.symlink("two.yaml", tmp_path / "cds.tmp")
    os.replace(tmp_path / "cds.tmp", link)
    await eventually(lambda: h.versions == ["one", "two"])


async def test_configmap_data_swap_with_watched_directory(tmp_path, h):
    """The layout kubelet gives a ConfigMap volume, and its atomic update."""
    volume = tmp_path / "config"
    volume.mkdir()
    (volume / "..2024_01").mkdir()
    write(volume / "..2024_01" / "cds.yaml", cds_yaml("1", "a"))
    os.symlink("..2024_01", volume / "..data")
    os.symlink("..data/cds.yaml", volume / "cds.yaml")
    h.subscribe(volume / "cds.yaml", watched_directory=str(volume)).start([])
    assert h.versions == ["1"]

    (volume / "..2024_02").mkdir()
    write(volume / "..2024_02" / "cds.yaml", cds_yaml("2", "b"))
    os.symlink("..2024_02", volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")
    shutil.rmtree(volume / "..2024_01")
    await eventually(lambda: h.versions == ["1", "2"])
    assert [r.name for r in h.owner.updates[-1].added] == ["b"]
    await asyncio.sleep(0.1)
    assert h.versions == ["1", "2"]  # one swap, one reload


async def test_move_into_watched_directory_reloads_an_untouched_file(tmp_path, h, cds):
    """Envoy's watched_directory contract: any move into the directory reloads the file."""
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    h.subscribe(cds, watched_directory=str(trigger)).start([])
    write(tmp_path / "flag", "x")
    os.replace(tmp_path / "flag", trigger / "flag")
    await eventually(lambda: h.stat("update_success") == 2)
    assert h.versions == ["1", "1"]


async def test_burst_of_writes_gives_one_reload(h, cds):
    h.subscribe(cds, debounce=0.3).start([])
    for i in range(5):
        write(cds, cds_yaml(f"burst-{i}", "a"))
        await asyncio.sleep(0.01)
    await eventually(lambda: len(h.versions) == 2)
    await asyncio.sleep(0.4)
    assert h.versions == ["1", "burst-4"]
    assert h.stat("update_attempt") == 2


async def test_broken_file_keeps_the_config_and_is_retried_when_fixed(h, cds):
    sub = h.subscribe(cds)
    sub.start([])
    replace(cds, "version_info: '2'\nresources: [ {\n")  # half written
    await eventually(lambda: h.owner.failures)
    [(reason, error)] = h.owner.failures
    assert reason is UpdateFailureReason.CONNECTION_FAILURE
    assert isinstance(error, ConfigError) and "YAML" in str(error)
    assert (h.stat("update_failure"), h.stat("update_rejected")) == (1, 0)
    assert h.versions == ["1"]
    assert h.stat("version_text") == "1"
    assert "YAML" in sub.last_failure.details and sub.last_failure.last_update_attempt > 0

    replace(cds, cds_yaml("3", "c"))
    await eventually(lambda: h.versions == ["1", "3"])
    assert sub.last_failure is None
    assert h.stat("update_failure") == 1


async def test_field_error_names_the_file_and_the_field(h, cds):
    h.subscribe(cds).start([])
    replace(cds, cds_yaml("2", "a").replace("connect_timeout: 1s", "connect_timeout: soon"))
    await eventually(lambda: h.owner.failures)
    message = str(h.owner.failures[0][1])
    assert str(cds) in message
    assert "resources[0].connect_timeout" in message


async def test_resource_of_another_type_is_rejected_naming_it(h, cds):
    sub = h.subscribe(cds)
    sub.start([])
    replace(cds, f"version_info: '2'\nresources:\n- '@type': {LISTENER_TYPE}\n  name: l\n")
    await eventually(lambda: h.stat("update_rejected") == 1)
    assert LISTENER_TYPE in sub.last_failure.details
    assert "resources[0]" in sub.last_failure.details
    assert sub.last_failure.version_info == "2"
    # The owner is told: a rejection, not a connection failure.
    [(reason, error)] = h.owner.failures
    assert reason is UpdateFailureReason.UPDATE_REJECTED and LISTENER_TYPE in str(error)
    assert h.versions == ["1"]
    assert h.stat("update_failure") == 0


async def test_owner_rejection_is_counted_and_remembered(h, cds):
    sub = h.subscribe(cds)
    sub.start([])
    h.owner.reject = "cluster a: bad"
    replace(cds, cds_yaml("2", "a"))
    await eventually(lambda: h.stat("update_rejected") == 1)
    assert sub.last_failure.details == "cluster a: bad"
    assert h.stat("version_text") == "1"
    h.owner.reject = None
    replace(cds, cds_yaml("3", "a"))
    await eventually(lambda: h.versions == ["1", "3"])
    assert sub.last_failure is None


async def test_named_subscription_gets_only_its_resources(h, cds):
    sub = h.subscribe(cds)
    sub.start(["b", "zz"])
    assert [r.name for r in h.owner.updates[-1].added] == ["b"]
    sub.update_resource_interest(["a"])
    await eventually(lambda: len(h.owner.updates) == 2)
    assert [r.name for r in h.owner.updates[-1].added] == ["a"]
    assert h.versions == ["1", "1"]
    sub.update_resource_interest([])
    await eventually(lambda: len(h.owner.updates) == 3)
    assert [r.name for r in h.owner.updates[-1].added] == ["a", "b"]


async def test_endpoints_are_named_by_cluster_name(tmp_path, h):
    path = tmp_path / "eds.json"
    cla = {"@type": decode.ENDPOINT, "cluster_name": "backend", "endpoints": []}
    other = dict(cla, cluster_name="other")
    write(path, json.dumps({"version_info": "e1", "resources": [cla, other]}))
    h.subscribe(path, type_url=decode.ENDPOINT).start(["backend"])
    [update] = h.owner.updates
    assert [r.name for r in update.added] == ["backend"]


async def test_binary_proto_file(tmp_path, h):
    response = discovery_pb2.DiscoveryResponse(version_info="pb")
    response.resources.add().Pack(decode.message_class(CLUSTER_TYPE)(name="p"))
    path = tmp_path / "cds.pb"
    path.write_bytes(response.SerializeToString())
    h.subscribe(path).start([])
    assert h.versions == ["pb"]
    assert h.owner.updates[0].added[0].name == "p"


async def test_unknown_fields_are_ignored_and_counted_by_default(h, cds):
    counter = h.store.counter("server.dynamic_unknown_fields")
    write(cds, cds_yaml("1", "a", extra="bogus: 1"))
    h.subscribe(cds, unknown_fields=UnknownFieldPolicy(counter=counter)).start([])
    assert h.versions == ["1"]
    assert counter.value == 1


async def test_unknown_fields_can_be_rejected(h, cds):
    write(cds, cds_yaml("1", "a", extra="bogus: 1"))
    sub = h.subscribe(cds, unknown_fields=UnknownFieldPolicy(reject=True))
    sub.start([])
    assert h.versions == []
    assert "unknown field 'bogus'" in sub.last_failure.details
    assert "resources[0].bogus" in sub.last_failure.details
    # Envoy counts an unknown field it must reject as a rejected update, not a failed one.
    assert (h.stat("update_rejected"), h.stat("update_failure")) == (1, 0)
    assert [reason for reason, _ in h.owner.failures] == [UpdateFailureReason.UPDATE_REJECTED]


async def test_nothing_after_close(h, cds):
    sub = h.subscribe(cds)
    sub.start([])
    sub.close()
    replace(cds, cds_yaml("2", "a"))
    await asyncio.sleep(0.15)
    assert h.versions == ["1"]


async def test_from_config_source(tmp_path, h, cds):
    source = config_source_pb2.ConfigSource()
    source.path_config_source.path = str(cds)
    source.path_config_source.watched_directory.path = str(tmp_path)
    sub = FilesystemSubscription.from_config_source(
        CLUSTER_TYPE, source, callbacks=h.owner, stats=h.stats, **FAST
    )
    h.subscriptions.append(sub)
    sub.start([])
    assert h.versions == ["1"]

    deprecated = config_source_pb2.ConfigSource(path=str(cds))
    sub = FilesystemSubscription.from_config_source(
        CLUSTER_TYPE, deprecated, callbacks=h.owner, stats=h.stats, **FAST
    )
    h.subscriptions.append(sub)
    sub.start([])
    assert h.versions == ["1", "1"]

    with pytest.raises(ConfigError, match="neither path_config_source nor path"):
        FilesystemSubscription.from_config_source(
            CLUSTER_TYPE, config_source_pb2.ConfigSource(), callbacks=h.owner, stats=h.stats
        )
