"""Identity checks: privileged users without a second factor."""

from __future__ import annotations

from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check


@register_check(
    "mfa-coverage",
    "Every privileged user has MFA enrolled",
    severity=Severity.HIGH,
    controls=("IA-2(1)", "IA-2(2)", "AC-6(5)"),
)
def privileged_mfa(ctx: CheckContext) -> Outcome:
    db = ctx.home.users_db
    if not db.is_file():
        return Outcome.not_applicable(f"no user store at {db}")
    from trainguard.policy import UserStore

    privileged = set(ctx.checks.privileged_roles)
    users = UserStore(db).list_users()
    holders = [u for u in users if privileged & set(u.roles)]
    missing = sorted(u.name for u in holders if not u.mfa_enrolled and not getattr(u, "locked", False))
    evidence = {
        "privileged_roles": sorted(privileged),
        "users": len(users),
        "privileged_users": sorted(u.name for u in holders),
        "without_mfa": missing,
    }
    if missing:
        return Outcome.fail(
            f"{len(missing)} privileged user(s) without MFA: {', '.join(missing)}",
            evidence,
            "enrol them with `trainguard user enrol NAME`, or remove the privileged role",
        )
    return Outcome.passed(f"all {len(holders)} privileged user(s) have MFA", evidence)
