"""Glance's policy rules against callers' credentials, with no server: imageport.access.policy."""

from __future__ import annotations

import json
import os

import pytest
from oslo_config import cfg

from imageport.access.identity import Identity
from imageport.access.policy import Policy, credentials, effective_roles
from imageport.access.policy_defaults import RULES, RULES_BY_NAME
from imageport.api import create_app
from imageport.api.access import image_target
from imageport.config import Settings
from imageport.errors import ConfigurationError, Forbidden
from imageport.records import Image, ImageProperty


def who(project, *roles, **extra):
    return Identity(project_id=project, user_id="u", roles=frozenset(roles), **extra)


ADMIN = who("ops", "admin")
MEMBER = who("alice", "member")
READER = who("alice", "reader")
OTHER = who("bob", "member")
OTHER_READER = who("bob", "reader")
NO_ROLES = who("alice")
NO_PROJECT = who(None, "member")
SYSTEM_ADMIN = who(None, "admin", system_scope="all")


def image(owner="alice", visibility="private", member=None):
    target = {"project_id": owner, "owner": owner, "visibility": visibility, "image_id": "i"}
    if member is not None:
        target["member_id"] = member
    return {k: v for k, v in target.items() if v is not None}


MINE = image()
BOBS = image("bob")
BOBS_PUBLIC = image("bob", "public")
BOBS_COMMUNITY = image("bob", "community")
BOBS_SHARED = image("bob", "shared")
SHARED_WITH_ALICE = image("bob", "shared", member="alice")
UNOWNED = image(None)

#: Rules that the image's project's members pass, and readers and other projects do not.
MEMBER_WRITES = (
    "delete_image", "modify_image", "communitize_image", "upload_image", "set_image_location",
    "add_member", "delete_member", "deactivate", "reactivate",
)  # fmt: skip
#: Rules only administrators pass.
ADMIN_ONLY = (
    "publicize_image", "copy_image", "delete_image_location", "manage_image_cache",
    "stores_info_detail", "tasks_api_access",
)  # fmt: skip


@pytest.fixture(scope="module")
def policy():
    return Policy()


@pytest.mark.parametrize("rule", MEMBER_WRITES)
def test_members_write_within_their_own_project(policy, rule):
    assert policy.allows(rule, MINE, MEMBER)
    assert policy.allows(rule, MINE, ADMIN)
    assert policy.allows(rule, BOBS, ADMIN)
    assert not policy.allows(rule, MINE, READER)
    assert not policy.allows(rule, MINE, OTHER)
    assert not policy.allows(rule, MINE, NO_ROLES)
    assert not policy.allows(rule, BOBS_PUBLIC, MEMBER)


@pytest.mark.parametrize("rule", ADMIN_ONLY)
def test_some_actions_are_for_administrators(policy, rule):
    assert policy.allows(rule, MINE, ADMIN)
    for caller in (MEMBER, READER, OTHER, NO_PROJECT):
        assert not policy.allows(rule, MINE, caller), caller


def test_add_image_needs_the_member_role_in_the_owning_project(policy):
    assert policy.allows("add_image", MINE, MEMBER)
    assert policy.allows("add_image", BOBS, ADMIN)
    assert not policy.allows("add_image", BOBS, MEMBER)  # an image for another project
    assert not policy.allows("add_image", MINE, READER)
    # project_id and owner must both be the caller's project.
    assert not policy.allows("add_image", {"project_id": "alice", "owner": "bob"}, MEMBER)
    assert not policy.allows("add_image", {}, NO_PROJECT)


def test_get_image_reader_sees_own_member_public_community_and_shared(policy):
    for target in (MINE, BOBS_PUBLIC, BOBS_COMMUNITY, SHARED_WITH_ALICE):
        assert policy.allows("get_image", target, READER), target
    # The policy allows any shared image; membership is the database layer's rule (access.py).
    assert policy.allows("get_image", BOBS_SHARED, READER)
    assert not policy.allows("get_image", BOBS, READER)
    assert not policy.allows("get_image", MINE, NO_ROLES)
    assert policy.allows("get_image", BOBS, ADMIN)


def test_download_needs_the_member_role(policy):
    assert policy.allows("download_image", BOBS_PUBLIC, MEMBER)
    assert policy.allows("download_image", SHARED_WITH_ALICE, MEMBER)
    assert not policy.allows("download_image", BOBS_PUBLIC, READER)
    assert not policy.allows("download_image", BOBS, MEMBER)


def test_lists_need_a_reader_role_in_a_project(policy):
    for caller in (READER, MEMBER, OTHER, ADMIN, SYSTEM_ADMIN):
        target = {"project_id": caller.project_id} if caller.project_id else {}
        expected = caller is not SYSTEM_ADMIN  # image rules are project-scoped, as in Glance
        assert policy.allows("get_images", target, caller) is expected, caller
    assert not policy.allows("get_images", {"project_id": "alice"}, NO_ROLES)
    assert not policy.allows("get_images", {}, NO_PROJECT)


def test_members_rules(policy):
    # The owner's readers and the member project's readers read the members.
    for rule in ("get_member", "get_members"):
        assert policy.allows(rule, MINE, READER)
        assert policy.allows(rule, SHARED_WITH_ALICE, READER)
        assert not policy.allows(rule, BOBS_SHARED, READER)
    # Only the member project answers a share; the owner does not.
    assert policy.allows("modify_member", SHARED_WITH_ALICE, MEMBER)
    assert not policy.allows("modify_member", SHARED_WITH_ALICE, READER)
    assert not policy.allows("modify_member", image("alice", "shared"), MEMBER)
    assert policy.allows("modify_member", BOBS_SHARED, ADMIN)


def test_task_rules_are_open_and_the_tasks_api_is_for_administrators(policy):
    for rule in ("get_task", "get_tasks", "add_task", "modify_task"):
        for caller in (MEMBER, NO_ROLES, NO_PROJECT, SYSTEM_ADMIN):
            assert policy.allows(rule, {}, caller), (rule, caller)
    assert policy.allows("tasks_api_access", {}, SYSTEM_ADMIN)  # tasks accept system scope
    assert not policy.allows("tasks_api_access", {}, MEMBER)


def test_no_project_never_matches_an_unowned_image(policy):
    # Both would read "None": the missing key must fail the check instead.
    for rule in ("modify_image", "get_image", "delete_image"):
        assert not policy.allows(rule, UNOWNED, NO_PROJECT), rule
    assert policy.allows("modify_image", UNOWNED, ADMIN)


def test_credentials_are_named_as_oslo_context_names_them():
    caller = Identity(
        project_id="p",
        user_id=None,
        roles=frozenset({"member"}),
        domain_id="d",
        project_domain_id="pd",
        service_roles=frozenset({"service"}),
    )
    creds = credentials(caller)
    assert creds["roles"] == ["member", "reader"]  # implied, as Keystone's tokens carry them
    assert creds["user_domain_id"] == "d"
    assert "domain_id" not in creds  # not a domain-scoped token
    assert "user_id" not in creds  # unknown values are left out
    assert creds["service_roles"] == ["service"]
    assert creds["is_admin"] is False
    assert effective_roles(frozenset({"admin"})) == {"admin", "member", "reader"}


def test_enforce_names_the_rule_and_what_is_lacking(policy):
    policy.enforce("communitize_image", MINE, MEMBER)
    with pytest.raises(Forbidden) as caught:
        policy.enforce("publicize_image", MINE, MEMBER)
    assert caught.value.message == (
        "policy does not allow publicize_image: making an image public is for administrators"
    )
    with pytest.raises(KeyError):
        policy.allows("publicise_image", MINE, ADMIN)  # a typo must not fall back to default


def test_every_rule_is_registered_with_glance_names(policy):
    names = {rule.name for rule in RULES}
    assert len(names) == len(RULES)
    assert set(policy._enforcer.registered_rules) == names
    assert {"add_image", "get_image", "tasks_api_access", "stores_info_detail"} <= names
    assert all(rule.refusal for rule in RULES if rule.name not in ("default", "context_is_admin"))


def test_every_documented_operation_is_a_route(tmp_path):
    paths = create_app(Settings(data_dir=tmp_path)).openapi()["paths"]
    routes = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    for rule in RULES:
        for method, path in rule.operations:
            assert (method, path) in routes, (rule.name, method, path)


def test_the_enforcer_has_its_own_configuration(policy):
    assert policy._conf is not cfg.CONF
    assert "oslo_policy" not in cfg.CONF


def test_a_policy_file_overrides_the_defaults(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text('add_image: "role:admin"\n"get_images": ""\n')
    policy = Policy(path)
    assert not policy.allows("add_image", MINE, MEMBER)
    assert policy.allows("get_images", {}, NO_PROJECT)
    assert policy.allows("modify_image", MINE, MEMBER)  # the rest keep Glance's defaults
    with pytest.raises(Forbidden, match="add_image: the operator's policy file overrides"):
        policy.enforce("add_image", MINE, MEMBER)
    # Changed on disk: oslo.policy reloads it, as Glance does.
    path.write_text('add_image: "role:member"\n')
    later = path.stat().st_mtime + 5
    os.utime(path, (later, later))
    assert policy.allows("add_image", BOBS, MEMBER)


def test_a_json_policy_file_works_too(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"publicize_image": "role:member", "admin_only": "role:admin"}))
    assert Policy(path).allows("publicize_image", MINE, MEMBER)


def test_a_context_is_admin_override_applies_to_every_admin_rule(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text('context_is_admin: "role:cloud-admin"\n')
    policy = Policy(path)
    assert not policy.allows("publicize_image", MINE, ADMIN)
    assert policy.allows("publicize_image", MINE, who("ops", "cloud-admin"))


def test_settings_name_the_policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text('copy_image: "role:member"\n')
    assert Policy.from_settings(Settings(policy_file=path)).allows("copy_image", MINE, MEMBER)
    assert not Policy.from_settings(Settings()).allows("copy_image", MINE, MEMBER)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("add_image: [", "is not a policy file"),
        ("- add_image\n", "is not a policy file"),
        ("42\n", "is not a policy file"),
        ('add_image: "rule:admin_or_owner"\n', "undefined rules"),
        ('add_image: "rule:add_image"\n', "undefined rules or to themselves"),
    ],
)
def test_a_broken_policy_file_is_a_configuration_error(tmp_path, content, words):
    path = tmp_path / "policy.yaml"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=words):
        Policy(path)


def test_a_missing_policy_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        Policy(tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigurationError, match="does not exist"):
        Policy(tmp_path)  # a directory is not a policy file


def test_policy_files_nobody_named_are_ignored(tmp_path, monkeypatch):
    # oslo.config's search path: the working directory, ~/, ~/.imageport/ (and /etc/...).
    for folder in (tmp_path, tmp_path / ".imageport"):
        folder.mkdir(exist_ok=True)
        (folder / "policy.yaml").write_text('modify_image: "!"\n')
    (tmp_path / "policy.d").mkdir()
    (tmp_path / "policy.d" / "x.yaml").write_text('get_image: "!"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    policy = Policy()
    assert policy.allows("modify_image", MINE, MEMBER)
    assert policy.allows("get_image", MINE, MEMBER)


def test_rule_table_lookup():
    assert RULES_BY_NAME["copy_image"].check_str == "rule:context_is_admin"
    assert RULES_BY_NAME["tasks_api_access"].check_str == "role:admin"


class _NoMembers:
    """A session stand-in: no project is a member of any image."""

    def get(self, *_args):
        return None


def test_a_property_never_stands_in_for_a_target_key():
    image = Image(id="i", owner="alice", visibility="public", status="active")
    image.properties = [
        ImageProperty(name="member_id", value="bob"),
        ImageProperty(name="owner", value="bob"),
        ImageProperty(name="os_distro", value="debian"),
    ]
    target = image_target(_NoMembers(), image, OTHER)
    assert "member_id" not in target
    assert target["owner"] == target["project_id"] == "alice"
    assert target["os_distro"] == "debian"
    assert target["visibility"] == "public"
    assert not Policy().allows("modify_member", target, OTHER)
