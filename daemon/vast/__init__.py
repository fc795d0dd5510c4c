"""Async client of the Vast.ai REST API: ``VastClient``, its typed errors and tolerant models."""

from socialsync.daemon.vast.client import DEFAULT_BASE_URL, OnCall, RetryPolicy, VastClient
from socialsync.daemon.vast.errors import (
    VastAuthError,
    VastBadRequestError,
    VastError,
    VastInsufficientCreditError,
    VastNotFoundError,
    VastOfferUnavailableError,
    VastProtocolError,
    VastQuotaExceededError,
    VastRateLimitError,
    VastUnavailableError,
    VastUncertainError,
)
from socialsync.daemon.vast.models import (
    CreateResult,
    DestroyOutcome,
    Instance,
    ListResult,
    Offer,
    PortBinding,
    User,
)
from socialsync.daemon.vast.pacing import DEFAULT_PACING, Pacer

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_PACING",
    "CreateResult",
    "DestroyOutcome",
    "Instance",
    "ListResult",
    "Offer",
    "OnCall",
    "Pacer",
    "PortBinding",
    "RetryPolicy",
    "User",
    "VastAuthError",
    "VastBadRequestError",
    "VastClient",
    "VastError",
    "VastInsufficientCreditError",
    "VastNotFoundError",
    "VastOfferUnavailableError",
    "VastProtocolError",
    "VastQuotaExceededError",
    "VastRateLimitError",
    "VastUnavailableError",
    "VastUncertainError",
]
