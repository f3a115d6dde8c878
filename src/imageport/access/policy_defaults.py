"""Glance's default policy rules, by Glance's rule names, as data.

The check strings are Glance's (``glance/policies``, with secure RBAC, the only mode Glance
has left): ``reader`` reads, ``member`` writes within its own project, ``admin`` (the
``context_is_admin`` rule) does everything, and a few actions are for administrators only.
Keeping Glance's names and strings is what lets an operator's existing Glance ``policy.yaml``
apply unchanged: a rule named there replaces the default of the same name here.

Each rule also carries ``refusal``: what a caller refused by the *default* rule lacks, in
words, for the 403 message (:mod:`imageport.access.policy` says "overridden by the policy
file" instead when the operator replaced the rule).

Targets (what ``%(name)s`` refers to) are built by the API (``imageport.api.access``): for an
image, ``project_id`` and ``owner`` are its owner, ``visibility`` its visibility and
``member_id`` the caller's project when that project is a member of the image; for a new image
the owner it will have; for lists, the caller's own project.
"""

from __future__ import annotations

from dataclasses import dataclass

# Building blocks, as in glance/policies/base.py.
ADMIN = "rule:context_is_admin"
PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
IMAGE_MEMBER_CHECK = "project_id:%(member_id)s"
COMMUNITY_VISIBILITY_CHECK = '"community":%(visibility)s'
PUBLIC_VISIBILITY_CHECK = '"public":%(visibility)s'
SHARED_VISIBILITY_CHECK = '"shared":%(visibility)s'
_ANY_VISIBLE = (
    f"project_id:%(project_id)s or {IMAGE_MEMBER_CHECK} or {COMMUNITY_VISIBILITY_CHECK} "
    f"or {PUBLIC_VISIBILITY_CHECK} or {SHARED_VISIBILITY_CHECK}"
)
ADMIN_OR_PROJECT_MEMBER = f"{ADMIN} or ({PROJECT_MEMBER})"
ADMIN_OR_PROJECT_READER = f"{ADMIN} or ({PROJECT_READER})"
ADMIN_OR_PROJECT_READER_GET_IMAGE = f"{ADMIN} or (role:reader and ({_ANY_VISIBLE}))"
ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE = f"{ADMIN} or (role:member and ({_ANY_VISIBLE}))"
ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE = f"{ADMIN} or ({PROJECT_MEMBER} and project_id:%(owner)s)"
ADMIN_OR_SHARED_MEMBER = f"{ADMIN} or (role:member and {IMAGE_MEMBER_CHECK})"
ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER = (
    f"{ADMIN} or (role:reader and (project_id:%(project_id)s or {IMAGE_MEMBER_CHECK}))"
)
DEFAULT = "rule:default"

#: Scope types of Glance's image rules: a system-scoped token is refused (oslo.policy's
#: InvalidScope), as in Glance.
PROJECT_SCOPE = ("project",)
#: Glance's task rules also accept system scope.
SYSTEM_OR_PROJECT_SCOPE = ("system", "project")


@dataclass(frozen=True)
class RuleSpec:
    """One default rule.

    Attributes:
        name: Glance's rule name (what a policy file overrides).
        check_str: the default check string.
        description: what the rule guards (oslo.policy's description).
        refusal: what a caller the default refuses lacks, for the 403 message.
        operations: ``(method, path)`` pairs the rule guards.
        scope_types: token scopes the rule accepts (empty: any).
    """

    name: str
    check_str: str
    description: str
    refusal: str
    operations: tuple[tuple[str, str], ...] = ()
    scope_types: tuple[str, ...] = PROJECT_SCOPE


_IMAGE = "/v2/images/{image_id}"
_MEMBER = f"{_IMAGE}/members/{{member_id}}"
_IN_PROJECT = "in the image's project"

#: Every default rule, in Glance's order.
RULES: tuple[RuleSpec, ...] = (
    RuleSpec("default", "", "Rule of checks that name no other rule.", "", scope_types=()),
    RuleSpec("context_is_admin", "role:admin", "Who is an administrator.", "", scope_types=()),
    RuleSpec(
        "add_image",
        ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE,
        "Create new image",
        "creating an image needs the member role in the project that will own it",
        (("POST", "/v2/images"),),
    ),
    RuleSpec(
        "delete_image",
        ADMIN_OR_PROJECT_MEMBER,
        "Deletes the image",
        f"deleting an image needs the member role {_IN_PROJECT}",
        (("DELETE", _IMAGE),),
    ),
    RuleSpec(
        "get_image",
        ADMIN_OR_PROJECT_READER_GET_IMAGE,
        "Get specified image",
        "the image is not visible to this caller",
        (("GET", _IMAGE),),
    ),
    RuleSpec(
        "get_images",
        ADMIN_OR_PROJECT_READER,
        "Get all available images",
        "listing images needs the reader role in a project",
        (("GET", "/v2/images"),),
    ),
    RuleSpec(
        "modify_image",
        ADMIN_OR_PROJECT_MEMBER,
        "Updates given image",
        f"changing an image needs the member role {_IN_PROJECT}",
        (("PATCH", _IMAGE),),
    ),
    RuleSpec(
        "publicize_image",
        ADMIN,
        "Publicize given image",
        "making an image public is for administrators",
        (("PATCH", _IMAGE),),
    ),
    RuleSpec(
        "communitize_image",
        ADMIN_OR_PROJECT_MEMBER,
        "Communitize given image",
        f"making an image community needs the member role {_IN_PROJECT}",
        (("PATCH", _IMAGE),),
    ),
    RuleSpec(
        "download_image",
        ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE,
        "Downloads given image",
        "downloading image data needs the member role",
        (("GET", f"{_IMAGE}/file"),),
    ),
    RuleSpec(
        "upload_image",
        ADMIN_OR_PROJECT_MEMBER,
        "Uploads data to specified image",
        f"uploading image data needs the member role {_IN_PROJECT}",
        (("PUT", f"{_IMAGE}/file"),),
    ),
    RuleSpec(
        "delete_image_location",
        ADMIN,
        "Deletes the location of given image",
        "removing an image's locations is for administrators",
        (("PATCH", _IMAGE),),
    ),
    RuleSpec(
        "get_image_location",
        ADMIN_OR_PROJECT_READER,
        "Reads the location of the image",
        f"reading an image's locations needs the reader role {_IN_PROJECT}",
        (("GET", _IMAGE),),
    ),
    RuleSpec(
        "set_image_location",
        ADMIN_OR_PROJECT_MEMBER,
        "Sets location URI to given image",
        f"changing an image's locations needs the member role {_IN_PROJECT}",
        (("PATCH", _IMAGE),),
    ),
    RuleSpec(
        "add_member",
        ADMIN_OR_PROJECT_MEMBER,
        "Create image member",
        f"sharing an image needs the member role {_IN_PROJECT}",
        (("POST", f"{_IMAGE}/members"),),
    ),
    RuleSpec(
        "delete_member",
        ADMIN_OR_PROJECT_MEMBER,
        "Delete image member",
        f"removing an image member needs the member role {_IN_PROJECT}",
        (("DELETE", _MEMBER),),
    ),
    RuleSpec(
        "get_member",
        ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
        "Show image member details",
        "reading image members needs the reader role in the image's project or a member one",
        (("GET", _MEMBER),),
    ),
    RuleSpec(
        "get_members",
        ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
        "List image members",
        "reading image members needs the reader role in the image's project or a member one",
        (("GET", f"{_IMAGE}/members"),),
    ),
    RuleSpec(
        "modify_member",
        ADMIN_OR_SHARED_MEMBER,
        "Update image member",
        "answering a share needs the member role in the member project",
        (("PUT", _MEMBER),),
    ),
    RuleSpec(
        "manage_image_cache",
        ADMIN,
        "Manage image cache",
        "managing the image cache is for administrators",
    ),
    RuleSpec(
        "deactivate",
        ADMIN_OR_PROJECT_MEMBER,
        "Deactivate image",
        f"deactivating an image needs the member role {_IN_PROJECT}",
        (("POST", f"{_IMAGE}/actions/deactivate"),),
    ),
    RuleSpec(
        "reactivate",
        ADMIN_OR_PROJECT_MEMBER,
        "Reactivate image",
        f"reactivating an image needs the member role {_IN_PROJECT}",
        (("POST", f"{_IMAGE}/actions/reactivate"),),
    ),
    RuleSpec(
        "copy_image",
        ADMIN,
        "Copy existing image to other stores",
        "copying an image to other stores is for administrators",
        (("POST", f"{_IMAGE}/import"),),
    ),
    # Tasks: the tasks API is guarded as a whole by tasks_api_access; get_task, get_tasks and
    # add_task are Glance's internal checks (the import creates a task), open by default.
    RuleSpec(
        "get_task",
        DEFAULT,
        "Get an image task.",
        "the policy file refuses reading this task",
        (("GET", "/v2/tasks/{task_id}"),),
        SYSTEM_OR_PROJECT_SCOPE,
    ),
    RuleSpec(
        "get_tasks",
        DEFAULT,
        "List tasks for all images.",
        "the policy file refuses listing tasks",
        (("GET", "/v2/tasks"),),
        SYSTEM_OR_PROJECT_SCOPE,
    ),
    RuleSpec(
        "add_task",
        DEFAULT,
        "Create a task (an import creates one).",
        "the policy file refuses creating tasks",
        (("POST", f"{_IMAGE}/import"),),
        SYSTEM_OR_PROJECT_SCOPE,
    ),
    RuleSpec(
        "modify_task",
        DEFAULT,
        "This policy is not used.",
        "the policy file refuses changing tasks",
        scope_types=SYSTEM_OR_PROJECT_SCOPE,
    ),
    RuleSpec(
        "tasks_api_access",
        "role:admin",
        "Access to the tasks API as a whole.",
        "the tasks API is for administrators",
        (("GET", "/v2/tasks"), ("GET", "/v2/tasks/{task_id}")),
        SYSTEM_OR_PROJECT_SCOPE,
    ),
    RuleSpec(
        "stores_info_detail",
        ADMIN,
        "Expose store specific information",
        "store details are for administrators",
        (("GET", "/v2/info/stores/detail"),),
    ),
)

#: The rules by name.
RULES_BY_NAME: dict[str, RuleSpec] = {rule.name: rule for rule in RULES}
