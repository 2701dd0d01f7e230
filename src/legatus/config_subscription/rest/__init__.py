"""State-of-the-world xDS polled over HTTP/1.1 (``api_config_source: {api_type: REST}``).

``HttpSubscription`` polls; ``rest_settings`` reads and checks a REST ConfigSource;
``rest_path`` is the endpoint of a resource type; ``response`` holds what the REST and file
subscriptions share (parsing, decoding, ``UpdateFailureState``).
"""

from legatus.config_subscription.rest.endpoints import rest_path
from legatus.config_subscription.rest.http_client import HostPortFactory
from legatus.config_subscription.rest.http_subscription import (
    HttpSubscription,
    RestSettings,
    rest_settings,
)
from legatus.config_subscription.rest.response import UnknownFieldPolicy, UpdateFailureState

__all__ = [
    "HostPortFactory",
    "HttpSubscription",
    "RestSettings",
    "UnknownFieldPolicy",
    "UpdateFailureState",
    "rest_path",
    "rest_settings",
]
