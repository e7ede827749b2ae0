"""Netmera REST API client (pure: requests only, no Airflow imports)."""

from optimove_netmera.http import (
    ApiError,
    AuthError,
    CallStats,
    ClientError,
    RateLimitedError,
    RateLimiter,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TransportError,
    chunked,
)
from optimove_netmera.netmera.client import (
    API_PREFIX,
    MAX_EXT_IDS,
    ExistenceUnknown,
    NetmeraClient,
    notification_key_str,
)
from optimove_netmera.netmera.models import (
    PlatformStats,
    ProfileAttributes,
    ProfileUnset,
    ProfileUpdate,
    PushStats,
    UserRegistration,
)

__all__ = [
    "API_PREFIX",
    "MAX_EXT_IDS",
    "ApiError",
    "AuthError",
    "CallStats",
    "ClientError",
    "ExistenceUnknown",
    "NetmeraClient",
    "PlatformStats",
    "ProfileAttributes",
    "ProfileUnset",
    "ProfileUpdate",
    "PushStats",
    "RateLimitedError",
    "RateLimiter",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "UserRegistration",
    "chunked",
    "notification_key_str",
]
