from legatus.stats.store import StatSet, Store, counter, gauge, histogram


class _Stats(StatSet):
    total = counter()
    active = gauge()
    length_ms = histogram()


def test_declared_stats_exist_at_zero_and_count():
    store = Store()
    stats = _Stats(store.scope("listener.x."))
    assert store.value("listener.x.total") == 0
    stats.total.inc()
    stats.total.add(2)
    stats.active.inc()
    assert store.value("listener.x.total") == 3
    assert store.value("listener.x.active") == 1
    assert not store.get("listener.x.length_ms").used


def test_flush_sends_deltas_and_main_sums_workers():
    main = Store()
    for worker in (0, 1):
        w = Store()
        stats = _Stats(w.scope("c."))
        stats.total.add(5)
        stats.active.set(2)
        stats.length_ms.record(7)
        main.merge_worker(worker, w.flush())
        stats.total.inc()
        main.merge_worker(worker, w.flush())
        assert w.flush().counters == {}  # nothing new since the previous flush
    assert main.value("c.total") == 12
    assert main.value("c.active") == 4
    assert main.get("c.length_ms").sample_count == 2
    main.forget_worker(1)  # a dead worker's connections are gone, its counts are not
    assert main.value("c.active") == 2
    assert main.value("c.total") == 12


def test_reset_counters_keeps_gauges():
    store = Store()
    stats = _Stats(store.scope("s."))
    stats.total.add(3)
    stats.active.set(9)
    store.reset_counters()
    assert store.value("s.total") == 0
    assert store.value("s.active") == 9


def test_hidden_stats_are_marked():
    store = Store()
    _Stats(store.scope("cluster.a.host.1.2.3.4:80."), hidden=True)
    assert all(s.hidden for s in store)


def test_histogram_buckets_and_quantiles():
    store = Store()
    h = store.histogram("h")
    for v in (0.2, 3, 3, 70, 900):
        h.record(v)
    assert h.sample_count == 5
    assert h.cumulative()[:4] == [1, 1, 3, 3]
    assert 0 < h.quantile(0.5) <= 5


def test_remove_prefix_drops_a_scope_and_a_late_worker_flush_does_not_bring_it_back():
    from envoy.config.cluster.v3 import cluster_pb2

    from legatus.upstream.cluster import compile_cluster
    from legatus.upstream.cluster_manager import drop_cluster_stats

    main, worker = Store(), Store()
    for store in (main, worker):
        store.counter("cluster.a.upstream_rq_total")
        store.counter("cluster.a.b.upstream_rq_total")  # another cluster, named "a.b"
        store.gauge("cluster.a.membership_total")
    worker.counter("cluster.a.upstream_rq_total").inc()
    flush = worker.flush()
    main.merge_worker(0, flush)
    assert main.value("cluster.a.upstream_rq_total") == 1

    other = compile_cluster(cluster_pb2.Cluster(name="a.b", type=cluster_pb2.Cluster.STATIC), "c")
    drop_cluster_stats(main, "a", [other])
    assert main.get("cluster.a.upstream_rq_total") is None
    assert main.get("cluster.a.membership_total") is None
    assert main.get("cluster.a.b.upstream_rq_total") is not None  # not cluster "a"'s

    worker.counter("cluster.a.upstream_rq_total").inc()
    main.merge_worker(0, worker.flush())  # in flight when the cluster went
    assert main.get("cluster.a.upstream_rq_total") is None
