"""Benchmark: authorize() at 10,000 policy lines vs plain casbin, and TOTP verification.

Prints one JSON object: policy_lines, authorize_p50_ms, authorize_p99_ms (random requests, as
deployed: decision cache on, mostly misses), authorize_repeat_p99_ms (cache hits),
casbin_enforcer_p99_ms (plain Enforcer, same policy, same requests: the in-run baseline),
totp_verify_p99_ms (code check, worst case: a wrong code checks 3 steps),
totp_verify_full_p99_ms (decrypt + check + atomic replay update in SQLite), and ratios.
Every request timed against casbin is also compared with it (a mismatch aborts).

Usage: python tests/bench/bench_authz.py [--requests N] [--casbin-requests M]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyotp
from trainguard.evidence.sink import NullSink
from trainguard.policy.actions import ACTIONS, default_policy_lines
from trainguard.policy.config import PolicyConfig
from trainguard.policy.decision import Principal, authorize
from trainguard.policy.errors import Denied
from trainguard.policy.mfa import match_step
from trainguard.policy.rbac import PolicyEngine, casbin_enforcer
from trainguard.policy.rules import rules_from_lines
from trainguard.policy.sessions import Session

N_USERS, N_ROLES, N_PROJECTS = 1000, 50, 10


def build_policy(rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    projects = [f"proj{i}" for i in range(N_PROJECTS)]
    custom = [f"role{i}" for i in range(N_ROLES - 5)]
    roles = custom + ["admin", "ml-engineer", "researcher", "auditor", "node"]
    users = [f"user{i}" for i in range(N_USERS)]
    acts = list(ACTIONS) + ["checkpoint:*", "dataset:*"]
    lines = list(default_policy_lines())
    for r in custom:
        for p in projects:
            for _ in range(15):
                eft = "deny" if rng.random() < 0.1 else "allow"
                res = rng.choice(
                    [f"/data/{p}/{rng.randrange(20)}/*", f"/ckpt/{p}/{rng.randrange(20)}", "*"]
                )
                lines.append(f"p, {r}, {p}, {res}, {rng.choice(acts)}, {eft}")
        for _ in range(3):
            lines.append(f"g, {r}, {rng.choice(roles)}, {rng.choice([*projects, '*'])}")
    for u in users:
        for _ in range(2):
            lines.append(f"g, {u}, {rng.choice(roles[:-1])}, {rng.choice(projects)}")
    while len(set(lines)) < 10_000:
        u, p = rng.choice(users), rng.choice(projects)
        lines.append(f"p, {u}, {p}, /data/{p}/{rng.randrange(20)}/*, {rng.choice(acts)}, deny")
    return list(dict.fromkeys(lines)), users, projects


def request(rng: random.Random, users: list[str], projects: list[str]) -> tuple[str, str, str, str]:
    p = rng.choice(projects)
    res = rng.choice(
        [f"/data/{p}/{rng.randrange(20)}/x", f"/ckpt/{p}/{rng.randrange(20)}", "/other"]
    )
    return rng.choice(users), p, res, rng.choice(list(ACTIONS))


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def time_authorize(
    engine: PolicyEngine, reqs: list[tuple[str, str, str, str]]
) -> tuple[list[float], int]:
    audit = NullSink()
    cfg = PolicyConfig()
    now = time.time()
    sessions = {}
    out, allowed = [], 0
    for sub, dom, obj, act in reqs:
        s = sessions.get(sub) or Session(sub, "uid", "n", "c", "k", now, now + 43200, now, "x")
        sessions[sub] = s
        t0 = time.perf_counter_ns()
        try:
            authorize(
                Principal(sub), act, obj, dom, engine=engine, audit=audit, session=s, config=cfg
            )
            allowed += 1
        except Denied:
            pass
        out.append((time.perf_counter_ns() - t0) / 1e6)
        if len(audit.events) > 10_000:
            audit.events.clear()
    return out, allowed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--casbin-requests", type=int, default=200)
    args = ap.parse_args()
    rng = random.Random(1)
    lines, users, projects = build_policy(rng)
    rules = rules_from_lines(lines)
    policy_lines = len(rules.grants) + len(rules.links)
    t0 = time.perf_counter()
    engine = PolicyEngine(rules)
    build_ms = (time.perf_counter() - t0) * 1e3

    reqs = [request(rng, users, projects) for _ in range(args.requests)]
    times, allowed = time_authorize(engine, reqs)
    repeat, _ = time_authorize(engine, reqs[: min(5000, len(reqs))])

    reference = casbin_enforcer(rules)
    fresh = PolicyEngine(rules)
    casbin_times = []
    for req in reqs[: args.casbin_requests]:
        t0 = time.perf_counter_ns()
        want = reference.enforce(*req)
        casbin_times.append((time.perf_counter_ns() - t0) / 1e6)
        if fresh.decide(*req).allowed != want:
            print(f"MISMATCH with casbin on {req}", file=sys.stderr)
            return 1

    secret = pyotp.random_base32(32)
    totp = pyotp.TOTP(secret)
    base = time.time()
    totp_times, pyotp_times = [], []
    for i in range(5000):
        code = f"{rng.randrange(10**6):06d}"
        t0 = time.perf_counter_ns()
        match_step(secret, code, base + i)
        totp_times.append((time.perf_counter_ns() - t0) / 1e6)
        t0 = time.perf_counter_ns()
        totp.verify(code, for_time=base + i, valid_window=1)
        pyotp_times.append((time.perf_counter_ns() - t0) / 1e6)

    full_times = bench_full_verify()

    a99, c99 = pct(times, 0.99), pct(casbin_times, 0.99)
    result = {
        "policy_lines": policy_lines,
        "users": N_USERS,
        "roles": N_ROLES,
        "projects": N_PROJECTS,
        "deny_rules": sum(1 for g in rules.grants if g.effect == "deny"),
        "engine_build_ms": round(build_ms, 2),
        "requests": len(reqs),
        "allowed_fraction": round(allowed / len(reqs), 3),
        "authorize_p50_ms": round(statistics.median(times), 4),
        "authorize_p99_ms": round(a99, 4),
        "authorize_repeat_p99_ms": round(pct(repeat, 0.99), 4),
        "casbin_enforcer_p50_ms": round(statistics.median(casbin_times), 3),
        "casbin_enforcer_p99_ms": round(c99, 3),
        "totp_verify_p99_ms": round(pct(totp_times, 0.99), 4),
        "pyotp_verify_p99_ms": round(pct(pyotp_times, 0.99), 4),
        "totp_verify_full_p99_ms": round(pct(full_times, 0.99), 3),
        "ratios": {
            "casbin_p99_over_authorize_p99": round(c99 / a99, 1),
            "authorize_p99_over_1ms_budget": round(a99 / 1.0, 3),
            "totp_p99_over_0.1ms_budget": round(pct(totp_times, 0.99) / 0.1, 3),
            "totp_p99_over_pyotp_verify_p99": round(
                pct(totp_times, 0.99) / pct(pyotp_times, 0.99), 2
            ),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


def bench_full_verify() -> list[float]:
    """MfaService.verify end to end: keyring decrypt, code check, atomic SQLite update."""
    from trainguard.crypto.keyring import Keyring
    from trainguard.policy.mfa import MfaService
    from trainguard.policy.users import UserStore

    with tempfile.TemporaryDirectory() as tmp:
        clock = [1_800_000_000.0]
        keyring = Keyring.create(Path(tmp) / "keys", clock=lambda: clock[0])
        users = UserStore(Path(tmp) / "users.db", clock=lambda: clock[0])
        users.add("u")
        mfa = MfaService(users, keyring, PolicyConfig(), NullSink(), clock=lambda: clock[0])
        uri = mfa.enrol("u", actor="bench").otpauth_uri
        totp = pyotp.TOTP(uri.split("secret=")[1].split("&")[0])
        out = []
        for _ in range(300):
            clock[0] += 30
            code = totp.at(clock[0])
            t0 = time.perf_counter_ns()
            mfa.verify("u", code)
            out.append((time.perf_counter_ns() - t0) / 1e6)
        users.close()
        return out


if __name__ == "__main__":
    sys.exit(main())
