"""The Prometheus configuration of the stack (docker/prometheus/) checked by Prometheus' own tool:
``promtool check config`` (with the rule files it names), ``promtool check rules`` and
``promtool test rules`` (rules_test.yml: synthetic TF Serving series → the recorded error share
and p99, and which alerts fire). Debian's ``prometheus`` package provides promtool (``make
system-deps``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
RULES = ROOT / "docker" / "prometheus" / "rules.yml"
RULES_TEST = Path(__file__).with_name("rules_test.yml")


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian: apt-get install -y prometheus, or make system-deps as root)")
    return exe


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_checks_the_config_and_the_rule_files_it_names(promtool):
    out = run(promtool, "check", "config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout + out.stderr  # rules.yml was found and checked with it


def test_promtool_checks_the_rules(promtool):
    out = run(promtool, "check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_on_synthetic_series(promtool):
    out = run(promtool, "test", "rules", str(RULES_TEST))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_would_catch_a_broken_rule(promtool, tmp_path):
    """The checks above are not vacuous: the same command refuses a rule with a PromQL error."""
    broken = tmp_path / "rules.yml"
    broken.write_text(RULES.read_text().replace("histogram_quantile(0.99,", "histogram_quantile(0.99,,", 1))
    out = run(promtool, "check", "rules", str(broken))
    assert out.returncode != 0 and "parse error" in (out.stdout + out.stderr).lower()
