"""Glance's visibility rules: who sees an image, who may change it.

An administrator sees every image. Anyone else sees an image that they own, that is
``public`` or ``community``, or that is ``shared`` with their project (a member row, whatever
its status). Only the owner (or an administrator) changes an image. Deleted images are gone for
everyone. An image that cannot be seen is reported as not found, never as forbidden, so its
existence does not leak.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from imageport.api.auth import Identity
from imageport.api.errors import ApiError, forbidden
from imageport.records import Image, ImageMember, ImageStatus, Visibility


def find_member(session: Session, image_id: str, project_id: str | None) -> ImageMember | None:
    """The member row of ``project_id`` on the image, if any."""
    if project_id is None:
        return None
    return session.get(ImageMember, (image_id, project_id))


def can_see(session: Session, image: Image, who: Identity) -> bool:
    """Whether ``who`` may see ``image`` (see the module docstring)."""
    if image.status == ImageStatus.DELETED:
        return False
    if who.is_admin or (who.project_id is not None and image.owner == who.project_id):
        return True
    if image.visibility in (Visibility.PUBLIC, Visibility.COMMUNITY):
        return True
    shared = image.visibility == Visibility.SHARED
    return shared and find_member(session, image.id, who.project_id) is not None


def visible_image(session: Session, image_id: str, who: Identity) -> Image:
    """The image, if ``who`` may see it.

    Raises:
        ApiError: 404 when it does not exist, is deleted or is not visible to ``who``.
    """
    image = session.get(Image, image_id)
    if image is None or not can_see(session, image, who):
        raise ApiError(404, f"no image found with id {image_id}", code="not_found")
    return image


def is_owner(image: Image, who: Identity) -> bool:
    """Whether ``who`` owns the image (administrators own everything)."""
    return who.is_admin or (who.project_id is not None and image.owner == who.project_id)


def owned_image(session: Session, image_id: str, who: Identity) -> Image:
    """The image, if ``who`` may change it.

    Raises:
        ApiError: 404 when not visible, 403 when visible but owned by another project.
    """
    image = visible_image(session, image_id, who)
    if not is_owner(image, who):
        raise forbidden(
            f"image {image_id} belongs to another project; only its owner may change it"
        )
    return image
