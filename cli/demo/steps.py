"""The steps of `trainguard demo`, in order. Each returns (one-line summary, data)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trainguard.cli.demo.run import DemoError, DemoRunner

DIGITS_CONFIG = "digits.toml"
FL_CONFIG = "fl-digits.toml"
# ALIE at the strength of Baruch et al. (z = 0.43 for 1 of 3 sites) stays inside the honest
# sites' spread: no update statistic separates it and the median is unharmed by it (0.92). The
# demo's site pushes harder (z = 25, 8.3 honest standard deviations off the mean under FedAvg),
# which the update monitor flags (norm > 3x the median norm) and the median absorbs meanwhile.
FL_ALIE_STRENGTH = 25.0
FL_ROUNDS = 6


class Demo(DemoRunner):
    """State shared by the steps: the admin's TOTP URI, the training run's outputs."""

    otpauth_uri: str = ""
    _last_step: int = -1
    _login_at: float = 0.0

    def fresh_code(self) -> str:
        """A TOTP code from the enrolled secret, as the admin's phone would show it. A code is
        accepted once only, so wait for the next 30-second step when this one was used."""
        import pyotp

        otp = pyotp.parse_uri(self.otpauth_uri)
        if not isinstance(otp, pyotp.TOTP):
            raise DemoError("the admin's enrolment is not a TOTP URI")
        step = int(time.time()) // otp.interval
        if step <= self._last_step:
            wait = (self._last_step + 1) * otp.interval - time.time() + 0.5
            self.progress(f"    waiting {wait:.0f} s for the next TOTP code")
            time.sleep(max(wait, 0))
            step = int(time.time()) // otp.interval
        self._last_step = step
        return otp.now()

    def relogin(self) -> None:
        """Step-up MFA is fresh for 5 minutes; log in again before a privileged step when less
        than two minutes of it are left."""
        if time.time() - self._login_at > 180:
            self.cli("login", "--user", "admin", "--otp", self.fresh_code())
            self._login_at = time.time()
    train_result: dict[str, Any]
    report_paths: dict[str, str]

    # 1 ---------------------------------------------------------------------------------------
    def create_home(self) -> tuple[str, dict[str, Any]]:
        data = self.cli("init", "--cluster", "demo", "--node", "node-1", "--admin", "admin").json()
        self.otpauth_uri = data["admin"]["otpauth_uri"]
        (self.workdir / "checkpoints").mkdir()
        (self.workdir / "models").mkdir()
        with (self.home / "trainguard.toml").open("a") as f:
            f.write(
                "\n[checks]\n"
                f'checkpoint_dirs = ["{self.workdir / "checkpoints"}"]\n'
                f'model_dirs = ["{self.workdir / "models"}"]\n'
                "\n[hooks.actions]\n"
                'unsafe-artifact = ["quarantine"]\n'
            )
        return (f"home {self.home}: KEK v{data['kek_version']}, node key {data['node_key_id']}, "
                f"CA and node certificate, signed policy, admin enrolled"), {"init": data}

    # 2 ---------------------------------------------------------------------------------------
    def agent_up(self) -> tuple[str, dict[str, Any]]:
        status = self.start_agent()
        return f"agent running (pid {self.agent.pid if self.agent else '?'}), API on {self.home / 'state' / 'agent.sock'}", {"status": status}

    # 3 ---------------------------------------------------------------------------------------
    def posture(self) -> tuple[str, dict[str, Any]]:
        res = self.cli("check", ok=(0, 1))
        data = res.json()
        results = data["results"] if isinstance(data, dict) else data
        counts: dict[str, int] = {}
        for r in results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        failing = [r["id"] for r in results if r["status"] in ("fail", "error")]
        text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        return f"{len(results)} checks: {text}" + (f" (failing: {', '.join(failing)})" if failing else ""), {"checks": counts}

    # 4 ---------------------------------------------------------------------------------------
    def dependencies(self) -> tuple[str, dict[str, Any]]:
        lock = self.cli("deps", "lock").json()
        verify = self.cli("deps", "verify", ok=(0, 1)).json()
        dists = lock.get("distributions", lock.get("count", "?"))
        n = len(dists) if isinstance(dists, list) else dists
        clean = verify.get("clean", not verify.get("drift"))
        return f"locked {n} distributions and verified them: {'no drift' if clean else 'DRIFT'}", {"lock": lock, "verify": verify}

    # 5 ---------------------------------------------------------------------------------------
    def login(self) -> tuple[str, dict[str, Any]]:
        code = self.fresh_code()
        data = self.cli("login", "--user", "admin", "--otp", code).json()
        self._login_at = time.time()
        return f"admin logged in with TOTP code {code[:2]}**** (step-up MFA fresh for 5 minutes)", {"login": data}

    # 6 ---------------------------------------------------------------------------------------
    def seal_and_sign(self) -> tuple[str, dict[str, Any]]:
        data = self.workdir / "dataset.csv"
        data.write_text("".join(f"{i},{i * i % 97}\n" for i in range(200_000)))
        sealed = self.workdir / "dataset.csv.tgseal"
        self.cli("seal", data, sealed)
        back = self.workdir / "dataset.roundtrip.csv"
        self.cli("unseal", sealed, back)
        if back.read_bytes() != data.read_bytes():
            raise DemoError("unsealed data differs from the original")
        blob = bytearray(sealed.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        tampered = self.workdir / "dataset.tampered.tgseal"
        tampered.write_bytes(bytes(blob))
        refused = self.cli("unseal", tampered, self.workdir / "should-not-exist.csv", ok=(1,))
        if (self.workdir / "should-not-exist.csv").exists():
            raise DemoError("a tampered stream left plaintext behind")
        self.cli("sign", self.workdir / "models")
        self.cli("verify", self.workdir / "models")
        return (f"sealed {data.stat().st_size / 1e6:.1f} MB, unsealed it identically; a one-bit flip was refused "
                f"(exit {refused.code}) with no output left; model folder signed and verified"), {}

    # 7 ---------------------------------------------------------------------------------------
    def _train(self, *extra: str) -> dict[str, Any]:
        from importlib import resources

        cfg = Path(str(resources.files("trainguard.trainer.examples").joinpath(DIGITS_CONFIG)))
        self.relogin()
        res = self.cli("train", cfg, "--nproc", "3",
                       "--set", f'checkpoint.dir="{self.workdir / "checkpoints"}"',
                       "--set", 'aggregation.method="trimmed-mean"',
                       "--set", "aggregation.exclude_flagged=true",
                       "--set", 'adversarial.method="fgsm-rs"',
                       "--set", "adversarial.eps=0.1",
                       *extra, ok=(0, 1), timeout=1200)
        data = dict(res.json())
        if data.get("status") not in ("completed",):
            raise DemoError(f"training did not complete: {data.get('status')}: {data.get('reason', '')}")
        return data

    def train(self) -> tuple[str, dict[str, Any]]:
        r = self._train("--set", "simulate.byzantine_ranks=[2]", "--set", 'simulate.attack="sign-flip"',
                        "--set", "simulate.start_step=150", "--export-weights", str(self.workdir / "model.pt"))
        self.train_result = r
        kinds = sorted({i["kind"] for i in r.get("incidents", [])})
        if "byzantine-worker" not in kinds:
            raise DemoError("the Byzantine worker was not flagged")
        return (f"{r['steps']} steps on 3 workers with FGSM-RS adversarial training and trimmed-mean; "
                f"rank 2 turned Byzantine at step 150 and was flagged (ranks {r.get('flagged_ranks')}) and excluded; "
                f"final accuracy {r['final_accuracy']:.1%}; {len(r.get('checkpoints', []))} sealed, signed checkpoints"), {"train": r}

    # 8 ---------------------------------------------------------------------------------------
    def tampered_resume(self) -> tuple[str, dict[str, Any]]:
        ckpts = sorted((self.workdir / "checkpoints").rglob("*.tgseal"))
        if not ckpts:
            raise DemoError("the training run left no sealed checkpoints to tamper with")
        newest = ckpts[-1]
        blob = bytearray(newest.read_bytes())
        blob[len(blob) // 2] ^= 0x40
        newest.write_bytes(bytes(blob))
        r = self._train("--resume", "--set", "train.steps=400")
        kinds = [i["kind"] for i in r.get("incidents", [])]
        if "checkpoint-tampered" not in kinds:
            raise DemoError("the tampered checkpoint was not reported as checkpoint-tampered")
        return (f"flipped one bit in {newest.name}: refused (checkpoint-tampered); resumed from the previous "
                f"verified checkpoint at step {r.get('resumed_from_step')} and trained to step {r['steps']}, "
                f"accuracy {r['final_accuracy']:.1%}"), {"resume": r}

    # 9 ---------------------------------------------------------------------------------------
    def malicious_pickle(self) -> tuple[str, dict[str, Any]]:
        planted = self.workdir / "models" / "pretrained.pt"
        planted.write_bytes(_malicious_pickle())
        scan = self.cli("scan", self.workdir / "models", ok=(1,)).json()
        unsafe = [f for f in scan["files"] if f["verdict"] == "unsafe"]
        found = ", ".join(sorted({g for f in unsafe for g in _globals(f)})) or "unsafe globals"
        check = self.cli("check", "--id", "model-artifacts", ok=(0, 1)).json()
        quarantined = not planted.exists() and any((self.home / "quarantine").iterdir())
        if not quarantined:
            raise DemoError("the unsafe artifact was not quarantined")
        return f"scanner found {found} in {planted.name}; the quarantine hook moved it aside (mode 000)", {"scan": scan, "check": check}

    # 10 --------------------------------------------------------------------------------------
    def robustness(self) -> tuple[str, dict[str, Any]]:
        weights = Path(self.train_result.get("model_weights") or self.train_result.get("export") or "")
        out = self.workdir / "robustness.json"
        args = ["robust", "eval", "--model", self.train_result.get("model_factory", ""), "--weights", weights,
                "--dataset", "digits", "--eps", "0.05,0.1,0.2,0.3", "--attack", "all", "--limit", "300",
                "--budget", "fast", "--out", out]  # fast: the AutoAttack sequence in demo time
        data = self.cli(*args, ok=(0, 1), timeout=900).json()
        worst = data.get("worst_case", {}).get("per_eps", [])
        failed = [c["name"] for c in data.get("checks", []) if c.get("passed") is False]
        return (f"clean accuracy {data['clean_accuracy']:.1%}; worst case over FGSM, PGD, APGD and the AutoAttack sequence (fast budget): "
                + ", ".join(f"eps {p['eps']:g} {p['accuracy']:.1%}" for p in worst)
                + f"; gradient-masking checks {'FAILED: ' + ', '.join(failed) if failed else 'passed'}"), {"robustness": data}

    # 11 --------------------------------------------------------------------------------------
    def _federation(self, *extra: str) -> dict[str, Any]:
        from importlib import resources

        cfg = Path(str(resources.files("trainguard.trainer.examples").joinpath(FL_CONFIG)))
        self.relogin()
        res = self.cli("fl", "run", cfg, "--sites", "3", "--set", f"federation.rounds={FL_ROUNDS}",
                       *extra, ok=(0, 1), timeout=1200)
        data = dict(res.json())
        if data.get("status") != "completed":
            raise DemoError(f"the federation did not complete: {data.get('status')}: {data.get('reason', '')}")
        return data

    def federated(self) -> tuple[str, dict[str, Any]]:
        clean = self._federation()
        attacked = self._federation("--set", 'aggregation.method="median"',
                                    "--set", "aggregation.flag_after=2",
                                    "--set", 'simulate.byzantine_sites=["site-2"]',
                                    "--set", 'simulate.attack="alie"',
                                    "--set", f"simulate.strength={FL_ALIE_STRENGTH}")
        flagged = [i for i in attacked["incidents"] if i["kind"] == "byzantine-worker"]
        excluded = [s["name"] for s in attacked["sites"] if s["excluded"]]
        if [i["site"] for i in flagged] != ["site-2"] or excluded != ["site-2"]:
            raise DemoError(f"the ALIE site was not flagged and excluded (incidents {flagged}, "
                            f"excluded {excluded})")
        gap = clean["final_accuracy"] - attacked["final_accuracy"]
        if gap > 0.05:
            raise DemoError(f"robust aggregation lost {gap:.1%} against the clean run (limit 5 points)")
        rounds = attacked["rounds"]
        return (f"3 sites on disjoint digits shards over TLS from the cluster CA, {rounds} rounds: clean "
                f"FedAvg {clean['final_accuracy']:.1%}; with site-2 sending ALIE updates (z = "
                f"{FL_ALIE_STRENGTH:g}) under the median, site-2 was flagged in round {flagged[0]['round']} "
                f"and excluded, accuracy {attacked['final_accuracy']:.1%}; "
                f"{len(attacked['checkpoints'])} sealed, signed global checkpoints"), \
            {"federated": {"clean": clean, "attacked": attacked}}

    # 12 --------------------------------------------------------------------------------------
    def report(self) -> tuple[str, dict[str, Any]]:
        data = self.cli("audit", "report", "--out", self.workdir / "report", "--formats", "html,md,json,oscal", ok=(0, 1)).json()
        self.report_paths = data["report"]
        verify = self.cli("audit", "verify", ok=(0,)).json()
        return (f"score {data['score']:.1f}/100 ({', '.join(f'{v} {k}' for k, v in data['controls'].items())}); "
                f"audit log verified"), {"report": data, "verify": verify}


def _malicious_pickle() -> bytes:
    """A protocol-4 pickle that would run `os.system` on load, assembled from opcodes.

    It is only ever written to disk for the scanner to find; nothing here loads it.
    """

    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw + b"\x94"  # SHORT_BINUNICODE + MEMOIZE

    body = s("os") + s("system") + b"\x93\x94" + s("echo trainguard-demo") + b"\x85\x94R\x94."
    return b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body


def _globals(entry: dict[str, Any]) -> list[str]:
    out = []
    for f in entry.get("findings", []):
        g = f.get("global") or f.get("name") if isinstance(f, dict) else None
        if g:
            out.append(str(g))
    return out


STEPS: list[tuple[str, str]] = [
    ("Create a home (keys, CA, policy, admin with TOTP)", "create_home"),
    ("Start the node agent", "agent_up"),
    ("Run the posture checks", "posture"),
    ("Lock and verify dependencies", "dependencies"),
    ("Log in as the admin with a TOTP code", "login"),
    ("Seal, unseal and sign data", "seal_and_sign"),
    ("Hardened training: 3 workers, adversarial training, robust aggregation, one Byzantine worker", "train"),
    ("Tamper with the newest checkpoint and resume", "tampered_resume"),
    ("Plant a malicious pickle in the model folder", "malicious_pickle"),
    ("Evaluate robustness", "robustness"),
    ("Federated learning: 3 sites over TLS, one sending ALIE updates, median aggregation", "federated"),
    ("Write the audit report (HTML, Markdown, JSON, OSCAL)", "report"),
]


def run_demo(demo: Demo) -> dict[str, Any]:
    try:
        for title, method in STEPS:
            demo.step(title, getattr(demo, method))
    finally:
        demo.stop_agent()
    return {
        "dir": str(demo.workdir),
        "home": str(demo.home),
        "report": getattr(demo, "report_paths", {}),
        "steps": [{"title": s.title, "summary": s.summary, "seconds": s.seconds} for s in demo.steps],
    }

