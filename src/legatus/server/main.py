"""``legatus``: the command line entry point, shaped like Envoy's ``main``."""

from __future__ import annotations

import logging
import sys

from legatus.config.errors import ConfigError
from legatus.server import options as opts

log = logging.getLogger("legatus.main")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ratelimit"]:  # the rate limit service (docs/ratelimit-service.md)
        from legatus.ratelimit.cli import main as ratelimit_main

        return ratelimit_main(argv[1:])
    try:
        options = opts.parse(argv)
    except opts.OptionsError as e:
        return opts.main_usage_error(str(e))
    if options.show_help:
        sys.stdout.write(opts.usage_text())
        return 0
    if options.show_version:
        sys.stdout.write(opts.version_text())
        return 0
    if options.show_hot_restart_version:
        sys.stdout.write("disabled\n")
        return 0
    from legatus.server import logging as envoy_logging

    try:
        sink = envoy_logging.configure_logging(
            level=options.log_level,
            component_levels=options.component_log_level,
            log_path=options.log_path or None,
            log_format=options.log_format,
            escaped=options.log_format_escaped,
        )
    except (ValueError, OSError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    log.info(
        "initializing epoch %d (base id=%d, hot restart version=%s)",
        options.restart_epoch,
        options.base_id,
        "disabled",
    )
    log.info("legatus version: %s", opts.BUILD_VERSION)
    for flag, why in options.unimplemented:
        log.warning("command-line flag %s is accepted but has no effect: %s", flag, why)
    return run(options, sink)


def run(options: opts.Options, sink) -> int:
    from legatus.config.bootstrap import load
    from legatus.extensions.registry import default_registry
    from legatus.server.server import Server, compile_config
    from legatus.stats.store import Store

    registry = default_registry()
    if log.isEnabledFor(logging.INFO):
        log.info("statically linked extensions:")
        by_category: dict[str, list[str]] = {}
        for ext in registry.extensions():
            by_category.setdefault(ext.category.value, []).append(ext.name)
        for category, names in sorted(by_category.items()):
            log.info("  %s: %s", category, ", ".join(sorted(names)))
    from legatus.stats.tag_extractor import TagConfigError, TagExtractor

    try:
        loaded = load(options, registry)
        compiled = compile_config(
            loaded.bootstrap, registry=registry, options=options, store=Store()
        )
        b = loaded.bootstrap
        try:
            tag_extractor = TagExtractor.from_stats_config(
                b.stats_config if b.HasField("stats_config") else None, options.stats_tags
            )
        except TagConfigError as e:
            raise ConfigError("stats_config.stats_tags", str(e)) from None
    except ConfigError as e:
        log.critical("error initializing configuration '%s': %s", options.config_path, e)
        return 1
    if options.mode == "validate":
        sys.stdout.write(f"configuration '{options.config_path}' OK\n")
        return 0
    import uvloop

    server = Server(
        options=options,
        bootstrap=loaded.bootstrap,
        compiled=compiled,
        registry=registry,
        log_sink=sink,
        tag_extractor=tag_extractor,
        unknown_static_fields=loaded.unknown_static_fields,
    )
    return uvloop.run(server.run())


if __name__ == "__main__":
    raise SystemExit(main())
