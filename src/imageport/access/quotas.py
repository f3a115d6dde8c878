"""Glance's quotas: the four unified limits per project, and the per-image counts.

:class:`Quotas` is what the API asks, at the points where Glance 33 asks:

=========================  ================================================================
``POST /v2/images``        ``image_count_total`` + 1; extra properties ≤ max_image_properties
``PUT …/stage``            ``image_stage_total`` before the bytes (delta: the declared
                           ``Content-Length``), then ``image_count_uploading`` once the image
                           shows ``uploading``
``PUT …/file``             ``image_size_total`` before the bytes (delta: ``Content-Length``),
                           then ``image_count_uploading`` once the image shows ``saving``
``POST …/import``          ``image_size_total`` (glance-direct: delta the staged size);
                           web-download, glance-download and copy-image also
                           ``image_stage_total`` and ``image_count_uploading`` + 1; the image's
                           locations after the import ≤ max_image_locations
``PATCH``                  extra properties ≤ max_image_properties when the patch adds one
``POST …/members``         members ≤ max_image_members
create, ``PATCH``, tags    tags ≤ max_image_tags (checked with the tag values, in api/fields.py)
=========================  ================================================================

The limits come from a :class:`~imageport.access.limits.LimitEnforcer`: the settings
(:class:`SettingsLimitEnforcer`) or, with ``use_keystone_limits``, Keystone's registered and
project limits (``imageport.access.keystone_limits``). A request without a project (noauth,
an unscoped or system-scoped token) has nobody to charge, so no unified limit applies to it;
administrators are charged like anyone else, as in Glance. Usage is counted by
:mod:`imageport.access.usage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from imageport.access import usage
from imageport.access.limits import (
    IMAGE_COUNT_TOTAL,
    IMAGE_COUNT_UPLOADING,
    IMAGE_SIZE_TOTAL,
    IMAGE_STAGE_TOTAL,
    LimitEnforcer,
    UsageReader,
)
from imageport.config import Settings
from imageport.errors import OverQuota
from imageport.records import Image
from imageport.records.reserved import RESERVED_PREFIX

#: oslo.limit's ``ProjectOverLimit`` and ``OverLimitInfo`` texts, which Glance passes on.
OVER_LIMIT = "Project {project} is over a limit for [{limits}]"
OVER_ONE = "Resource {name} is over limit of {limit} due to current usage {usage} and delta {delta}"
#: Glance's per-image quota messages (glance/common/exception.py), then what to do.
PER_IMAGE = (
    "The limit has been exceeded on the number of allowed image {what}. "
    "Attempted: {attempted}, Maximum: {maximum}. {hint}"
)
#: Import methods that bring new bytes through staging (Glance checks their staging usage).
STAGING_METHODS = frozenset({"web-download", "glance-download", "copy-image"})
COPY_IMAGE = "copy-image"
GLANCE_DIRECT = "glance-direct"


@dataclass(frozen=True)
class OverLimit:
    """One limit a request would pass: oslo.limit's ``OverLimitInfo``."""

    name: str
    limit: int
    usage: int
    delta: int

    def __str__(self) -> str:
        return OVER_ONE.format(name=self.name, limit=self.limit, usage=self.usage, delta=self.delta)


def over_limit_message(project_id: str, over: Sequence[OverLimit]) -> str:
    """oslo.limit's ``ProjectOverLimit`` message for the limits ``over`` names.

    For example ``Project P is over a limit for [Resource image_count_total is over limit of
    2 due to current usage 2 and delta 1]``.
    """
    return OVER_LIMIT.format(project=project_id, limits=", ".join(str(item) for item in over))


class SettingsLimitEnforcer:
    """The unified limits from the settings: the same for every project; None is unlimited."""

    def __init__(self, limits: Mapping[str, int | None]) -> None:
        self.limits = dict(limits)

    @classmethod
    def from_settings(cls, settings: Settings) -> SettingsLimitEnforcer:
        """The four ``image_*`` limits of the settings."""
        return cls(
            {
                IMAGE_SIZE_TOTAL: settings.image_size_total,
                IMAGE_STAGE_TOTAL: settings.image_stage_total,
                IMAGE_COUNT_TOTAL: settings.image_count_total,
                IMAGE_COUNT_UPLOADING: settings.image_count_uploading,
            }
        )

    def enforce(self, project_id: str, deltas: Mapping[str, int], usage: UsageReader) -> None:
        """Refuse when usage plus delta passes a limit, as oslo.limit's ``Enforcer`` does.

        Only the limited names are read (an unlimited one costs no query); over-limit
        resources are reported in name order, as oslo.limit sorts them.

        Raises:
            OverQuota: with oslo.limit's message, naming every limit passed.
        """
        names = sorted(name for name in deltas if self.limits.get(name) is not None)
        if not names:
            return
        current = usage(project_id, names)
        over = []
        for name in names:
            limit = self.limits[name]
            if limit is not None and current[name] + deltas[name] > limit:
                over.append(OverLimit(name, limit, current[name], deltas[name]))
        if over:
            raise OverQuota(over_limit_message(project_id, over))


def build_limit_enforcer(settings: Settings) -> LimitEnforcer:
    """Keystone's limits with ``use_keystone_limits``, else the settings' limits.

    The Keystone enforcer is imported only then: it needs oslo.limit and a Keystone.
    """
    if not settings.use_keystone_limits:
        return SettingsLimitEnforcer.from_settings(settings)
    # Imported here: oslo.limit (and its oslo.config set-up) is not loaded unless asked for.
    from imageport.access.keystone_limits import KeystoneLimitEnforcer  # noqa: PLC0415

    return KeystoneLimitEnforcer(settings)


def mib(size: int | None) -> int:
    """Whole MiB of ``size`` bytes (rounded down, as Glance counts; None is 0)."""
    return (size or 0) // usage.MIB


def user_properties(names: Iterable[str]) -> int:
    """How many of ``names`` count towards the property quota.

    Glance's reserved ``os_glance_*`` properties are left out: only imageport writes them
    (import bookkeeping), so counting them would let an import push an image over a quota its
    owner cannot get back under.
    """
    return sum(1 for name in names if not name.startswith(RESERVED_PREFIX))


@dataclass(frozen=True)
class Quotas:
    """The quota checks the API makes (see the module docstring for where)."""

    enforcer: LimitEnforcer
    max_properties: int
    max_members: int
    max_locations: int
    default_store: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        """Quotas with the configured limits (Keystone's or the settings')."""
        return cls(
            enforcer=build_limit_enforcer(settings),
            max_properties=settings.max_image_properties,
            max_members=settings.max_image_members,
            max_locations=settings.max_image_locations,
            default_store=settings.default_store,
        )

    def enforce(self, session: Session, project_id: str | None, deltas: Mapping[str, int]) -> None:
        """Refuse when the project would pass a unified limit; no project, no limit.

        Raises:
            OverQuota: oslo.limit's message (HTTP 413).
        """
        if project_id is None:
            return
        self.enforcer.enforce(project_id, deltas, usage.reader(session))

    def check_create(self, session: Session, project_id: str | None) -> None:
        """``POST /v2/images``: one more image for the project."""
        self.enforce(session, project_id, {IMAGE_COUNT_TOTAL: 1})

    def check_data(
        self, session: Session, project_id: str | None, *, staging: bool, declared: int | None
    ) -> None:
        """``PUT /stage`` (``staging``) or ``PUT /file``, before any byte is read.

        Glance checks the current usage (delta 0) because the size is unknown until the bytes
        are in; a declared ``Content-Length`` is the least the upload adds (decompression only
        adds), so it is the delta: an upload that must end over the limit is refused before it
        costs the transfer.
        """
        name = IMAGE_STAGE_TOTAL if staging else IMAGE_SIZE_TOTAL
        self.enforce(session, project_id, {name: mib(declared)})

    def check_uploading(self, session: Session, project_id: str | None) -> None:
        """After the image shows ``uploading``/``saving``: it counts already (delta 0).

        Glance's order: the status is committed first and the count checked after, so two
        concurrent uploads cannot both slip under the limit (at worst both are refused).
        """
        self.enforce(session, project_id, {IMAGE_COUNT_UPLOADING: 0})

    def check_import(
        self,
        session: Session,
        project_id: str | None,
        image: Image,
        method: str,
        stores: Sequence[str],
    ) -> None:
        """``POST /import``: the image's locations afterwards, then the unified limits.

        glance-direct adds its staged bytes (recorded on the image) to ``image_size_total``;
        the methods that stage bytes themselves also check ``image_stage_total`` (delta: the
        image's size, known for copy-image) and start one more upload.
        """
        held = {location.store_id for location in image.locations}
        targets = set(stores or (self.default_store,))
        self.check_locations(len(image.locations) + len(targets - held))
        if method == GLANCE_DIRECT:
            deltas = {IMAGE_SIZE_TOTAL: mib(image.size)}
        else:
            deltas = {IMAGE_SIZE_TOTAL: 0}
        if method in STAGING_METHODS:
            deltas[IMAGE_STAGE_TOTAL] = mib(image.size) if method == COPY_IMAGE else 0
            deltas[IMAGE_COUNT_UPLOADING] = 1
        self.enforce(session, project_id, deltas)

    def check_properties(self, names: Iterable[str]) -> None:
        """An image with these extra properties (reserved ones aside).

        Raises:
            OverQuota: more than ``max_image_properties``.
        """
        attempted = user_properties(names)
        if attempted > self.max_properties:
            hint = "Remove properties first, or ask the operator to raise max_image_properties."
            raise OverQuota(per_image_message("properties", attempted, self.max_properties, hint))

    def check_members(self, attempted: int) -> None:
        """An image with ``attempted`` members.

        Raises:
            OverQuota: more than ``max_image_members``.
        """
        if attempted > self.max_members:
            hint = "Remove a member first, or ask the operator to raise max_image_members."
            message = per_image_message("members for this image", attempted, self.max_members, hint)
            raise OverQuota(message)

    def check_new_member(self, session: Session, image_id: str) -> None:
        """One more member on the image (Glance counts members whatever their status).

        Raises:
            OverQuota: the image has ``max_image_members`` already.
        """
        self.check_members(usage.member_count(session, image_id) + 1)

    def check_locations(self, attempted: int) -> None:
        """An image with ``attempted`` locations.

        Raises:
            OverQuota: more than ``max_image_locations``.
        """
        if attempted > self.max_locations:
            hint = "Import to fewer stores, or ask the operator to raise max_image_locations."
            raise OverQuota(per_image_message("locations", attempted, self.max_locations, hint))


def per_image_message(what: str, attempted: int, maximum: int, hint: str) -> str:
    """Glance's message for a per-image quota, then ``hint``: what to do about it.

    ``what`` is ``properties``, ``tags``, ``locations`` or ``members for this image``.
    """
    return PER_IMAGE.format(what=what, attempted=attempted, maximum=maximum, hint=hint)
