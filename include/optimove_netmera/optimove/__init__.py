"""Optimove API client (pure: requests only, no Airflow imports)."""

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
)
from optimove_netmera.optimove.client import MAX_METRICS_PER_CALL, MAX_PAGE_SIZE, OptimoveClient
from optimove_netmera.optimove.models import (
    AttributeChange,
    AttributeInfo,
    AttributeValue,
    CampaignDetails,
    CampaignMetric,
    CanceledCustomer,
    EventListener,
    ExecutionChannel,
    ExecutionDetail,
    Template,
)

__all__ = [
    "MAX_METRICS_PER_CALL",
    "MAX_PAGE_SIZE",
    "ApiError",
    "AttributeChange",
    "AttributeInfo",
    "AttributeValue",
    "AuthError",
    "CallStats",
    "CampaignDetails",
    "CampaignMetric",
    "CanceledCustomer",
    "ClientError",
    "EventListener",
    "ExecutionChannel",
    "ExecutionDetail",
    "OptimoveClient",
    "RateLimitedError",
    "RateLimiter",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "Template",
    "TransportError",
]
