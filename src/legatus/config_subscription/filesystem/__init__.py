"""xDS from a file (``path_config_source``, the deprecated ``path``): a DiscoveryResponse read
from disk and reloaded when the file, any symlink on its path, or its ``watched_directory``
changes.

``FilesystemSubscription`` is the subscription; ``FileWatcher`` the change detector it polls;
``load_response`` reads a file's bytes as Envoy does.
"""

from legatus.config_subscription.filesystem.document import load_response
from legatus.config_subscription.filesystem.filesystem_subscription import FilesystemSubscription
from legatus.config_subscription.filesystem.watcher import FileWatcher

__all__ = ["FileWatcher", "FilesystemSubscription", "load_response"]
