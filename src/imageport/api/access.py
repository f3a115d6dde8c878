"""Who sees an image, and what the policy lets a caller do with it.

Two layers, as in Glance:

* **Visibility** (Glance's database layer): an administrator sees every image; anyone else
  sees an image that they own, that is ``public`` or ``community``, or that is ``shared`` with
  their project (a member row, whatever its status). Deleted images are gone for everyone. An
  image that cannot be seen is reported as not found, never as forbidden, so its existence does
  not leak.
* **Policy** (:class:`imageport.access.policy.Policy`, Glance's rules by name): each route
  checks its rule against the image's target. A refusal is 403, unless the caller may not even
  ``get_image`` the image: then it is 404, as in Glance.

Changes stay with the image's owner (or an administrator) whatever the policy says, because
Glance keeps that rule in its database layer too (``is_image_mutable``): a policy file can
narrow who changes an image, not widen it to other projects.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from imageport.access.policy import Policy
from imageport.api.auth import Identity
from imageport.api.errors import ApiError, forbidden
from imageport.records import Image, ImageMember, ImageStatus, Task, Visibility

#: The rule that guards each visibility a caller asks for (others need none of their own).
VISIBILITY_RULES = {Visibility.PUBLIC: "publicize_image", Visibility.COMMUNITY: "communitize_image"}
#: Image columns a policy target carries besides ids, owner and visibility (Glance's target
#: has every image attribute; rules may compare any of them).
_TARGET_COLUMNS = (
    "name", "status", "protected", "os_hidden", "disk_format", "container_format", "min_disk",
    "min_ram", "size", "virtual_size", "checksum",
)  # fmt: skip


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


def not_found(image_id: str) -> ApiError:
    """The 404 of an image that does not exist or that the caller may not see."""
    return ApiError(404, f"no image found with id {image_id}", code="not_found")


def visible_image(session: Session, image_id: str, who: Identity) -> Image:
    """The image, if ``who`` may see it.

    Raises:
        ApiError: 404 when it does not exist, is deleted or is not visible to ``who``.
    """
    image = session.get(Image, image_id)
    if image is None or not can_see(session, image, who):
        raise not_found(image_id)
    return image


def is_owner(image: Image, who: Identity) -> bool:
    """Whether ``who`` owns the image (administrators own everything)."""
    return who.is_admin or (who.project_id is not None and image.owner == who.project_id)


def owned_image(session: Session, image_id: str, who: Identity) -> Image:
    """The image, if ``who`` may change it (visibility and ownership, no policy rule).

    Raises:
        ApiError: 404 when not visible, 403 when visible but owned by another project.
    """
    image = visible_image(session, image_id, who)
    check_owner(image, who)
    return image


def check_owner(image: Image, who: Identity) -> None:
    """Refuse (403) a change of an image that another project owns."""
    if not is_owner(image, who):
        raise forbidden(
            f"image {image.id} belongs to another project; only its owner may change it"
        )


# Policy targets: what ``%(name)s`` in a rule refers to.


def image_target(session: Session, image: Image, who: Identity) -> dict[str, object]:
    """Glance's target for an image.

    ``project_id`` and ``owner`` are the image's owner; ``member_id`` is the caller's project
    when it is a member of the image (absent otherwise); extra properties are there too, under
    their names, unless they would hide a core field. Unknown values are left out, so a rule
    comparing one fails rather than matching the text "None".
    """
    member = find_member(session, image.id, who.project_id)
    core: dict[str, object] = {
        "id": image.id,
        "image_id": image.id,
        "project_id": image.owner,
        "owner": image.owner,
        "visibility": str(image.visibility),
        "member_id": who.project_id if member is not None else None,
        **{column: getattr(image, column) for column in _TARGET_COLUMNS},
    }
    # A property never stands in for a core key, even one left out as unknown: the owner
    # could otherwise name a "member_id" property after any project (Glance's target, too,
    # reads an attribute before the properties).
    target: dict[str, object] = {p.name: p.value for p in image.properties if p.name not in core}
    target.update({key: value for key, value in core.items() if value is not None})
    return target


def creation_target(owner: str | None, visibility: str | None) -> dict[str, object]:
    """Glance's target for a new image: the owner it will have and its visibility."""
    target = {"project_id": owner, "owner": owner, "visibility": visibility}
    return {key: value for key, value in target.items() if value is not None}


def caller_target(who: Identity) -> dict[str, object]:
    """Glance's target for lists and the tasks API: the caller's own project."""
    return {} if who.project_id is None else {"project_id": who.project_id}


def task_target(task: Task) -> dict[str, object]:
    """The target of one task: its owner's project, its id and its image."""
    target = {
        "project_id": task.owner,
        "owner": task.owner,
        "task_id": task.id,
        "image_id": task.image_id,
    }
    return {key: value for key, value in target.items() if value is not None}


def visibility_rule(value: object) -> str | None:
    """The rule that guards setting ``value`` as an image's visibility (None: only modify)."""
    for visibility, rule in VISIBILITY_RULES.items():
        if value == visibility:
            return rule
    return None


def patch_rules(operations: Iterable[tuple[str, str, object]]) -> list[str]:
    """The rules a JSON patch needs, in Glance's order, each once.

    A visibility change checks its own rule (``publicize_image``, ``communitize_image``)
    before ``modify_image``; a change of ``locations`` checks ``set_image_location`` (or
    ``delete_image_location`` to remove them) instead; anything else ``modify_image``. An
    empty patch still needs ``modify_image``.
    """
    rules: list[str] = []
    for op, name, value in operations:
        if name == "locations":
            removes = op == "remove" or (op == "replace" and value == [])
            rules.append("delete_image_location" if removes else "set_image_location")
            continue
        special = visibility_rule(value) if name == "visibility" else None
        rules.extend([special, "modify_image"] if special else ["modify_image"])
    return list(dict.fromkeys(rules)) or ["modify_image"]


# Checks


def authorize_creation(
    policy: Policy, who: Identity, owner: str | None, visibility: str | None
) -> None:
    """Check ``add_image`` for a new image and, for a visibility asked for, its rule.

    Raises:
        Forbidden: 403 naming the rule that refuses.
    """
    target = creation_target(owner, visibility)
    policy.enforce("add_image", target, who)
    rule = visibility_rule(visibility)
    if rule is not None:
        policy.enforce(rule, target, who)


def authorize(session: Session, policy: Policy, image: Image, who: Identity, *rules: str) -> None:
    """Check each of ``rules`` on ``image``, in order.

    Raises:
        ApiError: 404 when a rule refuses and ``get_image`` refuses too (the caller must not
            learn that the image exists).
        Forbidden: 403 naming the first rule that refuses.
    """
    target = image_target(session, image, who)
    for rule in rules:
        if policy.allows(rule, target, who):
            continue
        if rule == "get_image" or not policy.allows("get_image", target, who):
            raise not_found(image.id)
        policy.enforce(rule, target, who)  # raises the 403 with the rule's message


def permitted_image(
    session: Session, image_id: str, who: Identity, policy: Policy, *rules: str
) -> Image:
    """The image, if ``who`` sees it and ``rules`` allow what the route does with it.

    Raises:
        ApiError: 404 when it is not visible (see :func:`authorize`).
        Forbidden: 403 when a rule refuses.
    """
    image = visible_image(session, image_id, who)
    authorize(session, policy, image, who, *rules)
    return image


def importable_image(
    session: Session, image_id: str, who: Identity, policy: Policy, method: str
) -> Image:
    """The image, if ``who`` may start an import of ``method`` on it, as Glance decides.

    copy-image is the ``copy_image`` rule alone (Glance checks no ownership there: a policy
    may open copying of images other projects own); every other method changes the image's
    data, so it is ``modify_image`` and the owner. Either creates a task: ``add_task``.

    Raises:
        ApiError: 404 when it is not visible; 403 when another project owns it.
        Forbidden: 403 when a rule refuses.
    """
    if method == "copy-image":
        image = permitted_image(session, image_id, who, policy, "copy_image")
    else:
        image = changeable_image(session, image_id, who, policy, "modify_image")
    policy.enforce("add_task", caller_target(who), who)
    return image


def changeable_image(
    session: Session, image_id: str, who: Identity, policy: Policy, *rules: str
) -> Image:
    """The image, if ``rules`` allow the change and ``who`` owns it (or is an administrator).

    Raises:
        ApiError: 404 when it is not visible; 403 when another project owns it.
        Forbidden: 403 when a rule refuses.
    """
    image = permitted_image(session, image_id, who, policy, *rules)
    check_owner(image, who)
    return image
