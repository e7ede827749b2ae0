"""Typed request and result objects of the Netmera REST API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PlatformStats",
    "ProfileAttributes",
    "ProfileUnset",
    "ProfileUpdate",
    "PushStats",
    "UserRegistration",
]


@dataclass(frozen=True)
class ProfileUpdate:
    """One ``setProfileAttributes`` entry: set these profile attributes on the user ``ext_id``."""

    ext_id: str
    profile: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"extId": ..., "profile": {...}}``."""
        return {"extId": str(self.ext_id), "profile": dict(self.profile)}


@dataclass(frozen=True)
class ProfileUnset:
    """One ``unsetProfileAttributes`` entry: remove these attribute keys from the user ``ext_id``."""

    ext_id: str
    attributes: Sequence[str]

    def to_json(self) -> dict[str, Any]:
        """``{"extId": ..., "profile": [keys]}``."""
        if isinstance(self.attributes, str):
            raise TypeError("attributes must be a sequence of names, not a string")
        return {"extId": str(self.ext_id), "profile": list(self.attributes)}


@dataclass(frozen=True)
class UserRegistration:
    """One ``registerUsers`` entry (a device with token and platform, or an SMS-only user)."""

    ext_id: str
    platform: str | None = None
    device_token: str | None = None
    email: str | None = None
    msisdn: str | None = None
    tags: Sequence[str] = ()
    profile: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The API's camelCase object, omitting empty fields."""
        out: dict[str, Any] = {"extId": str(self.ext_id)}
        for key, value in (
            ("platform", self.platform),
            ("deviceToken", self.device_token),
            ("email", self.email),
            ("msisdn", self.msisdn),
        ):
            if value is not None:
                out[key] = value
        if self.tags:
            out["tags"] = list(self.tags)
        if self.profile:
            out["profile"] = dict(self.profile)
        return out


@dataclass(frozen=True)
class ProfileAttributes:
    """``getProfileAttributes``: a user's current profile."""

    ext_id: str | None
    profile: dict[str, Any]

    @classmethod
    def from_json(cls, body: Mapping[str, Any], ext_id: str) -> ProfileAttributes:
        """Build from the response object."""
        profile = body.get("profile")
        return cls(
            ext_id=body.get("extId", ext_id),
            profile=dict(profile) if isinstance(profile, Mapping) else {},
        )


@dataclass(frozen=True)
class PlatformStats:
    """Per-platform counters of a push."""

    platform: str
    sent: int = 0
    failed: int = 0
    clicked: int = 0

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> PlatformStats:
        """Build from one ``stats`` entry."""
        return cls(
            platform=str(row.get("platform", "")),
            sent=int(row.get("sent") or 0),
            failed=int(row.get("failed") or 0),
            clicked=int(row.get("clicked") or 0),
        )


@dataclass(frozen=True)
class PushStats:
    """``getPushStats`` for one notification key. Dates are epoch milliseconds as Netmera sends them."""

    notification_key: str
    status: str | None
    start_date: int | None
    end_date: int | None
    stats: list[PlatformStats] = field(default_factory=list)

    @property
    def sent(self) -> int:
        """Total sent across platforms."""
        return sum(s.sent for s in self.stats)

    @property
    def failed(self) -> int:
        """Total failed across platforms."""
        return sum(s.failed for s in self.stats)

    @classmethod
    def from_json(cls, body: Mapping[str, Any], notification_key: str) -> PushStats:
        """Build from the response object."""
        key = body.get("notificationKey", notification_key)
        rows = body.get("stats") or []
        return cls(
            notification_key=str(key),
            status=body.get("status"),
            start_date=body.get("startDate"),
            end_date=body.get("endDate"),
            stats=[PlatformStats.from_json(r) for r in rows if isinstance(r, Mapping)],
        )
