"""ESPER_LIFETIMES: one parser (esper_lifetimes.config); a bad value never breaks the
program at import; the API's bad values are ConfigError (a LifetimesError) naming them."""

from __future__ import annotations

import os
import subprocess
import sys

import esper_lifetimes as el
import pytest
from esper_lifetimes import config, modes


@pytest.fixture(autouse=True)
def _switch_back():
    yield
    el.disable()
    el.enable()


def _run(code: str, value: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ESPER_LIFETIMES"}
    if value is not None:
        env["ESPER_LIFETIMES"] = value
    cmd = [sys.executable, "-c", code] if code else list(args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


# The import, as the watched program (or pytest) does it: the tracking switch as
# tracking/policy.py reads it, without importing torch for the values it keeps off.
_PROBE = (
    "import sys, esper_lifetimes as el\n"
    "from esper_lifetimes import config\n"
    "print(config.enabled_by_env(), el.always_on() if 'torch' in sys.modules else None)\n"
)


@pytest.mark.parametrize("value", ["bogus", "always-on,bogus=1", "full,sample=2", "sometimes"])
def test_a_bad_value_warns_once_and_stays_off(value):
    out = _run(_PROBE, value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None"]
    assert out.stderr.count("ConfigWarning") == 1, out.stderr
    assert "tracking stays off" in out.stderr
    assert "accepted: off" in out.stderr and "always-on" in out.stderr


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("1", True),
        ("true", True),
        ("on", True),
        ("YES", True),
        ("enabled", True),
        ("0", False),
        ("false", False),
        ("off", False),
        ("disable", False),
        ("disabled", False),
        ("", True),
    ],
)
def test_truthy_and_falsy_spellings(value, enabled):
    out = _run(_PROBE, value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(enabled), "None"]
    assert "Warning" not in out.stderr, out.stderr


def test_tracking_module_agrees_with_the_parser():
    code = "import esper_lifetimes.tracking as t; print(t.is_enabled())"
    assert _run(code, "disabled").stdout.split() == ["False"]
    out = _run(code, "bogus")
    assert out.stdout.split() == ["False"]
    assert out.stderr.count("ConfigWarning") == 1, out.stderr
    assert _run(code, "true").stdout.split() == ["True"]


def test_unwritable_report_path_warns_and_stays_off(tmp_path):
    report = tmp_path / "missing-dir" / "hz.jsonl"
    code = "import esper_lifetimes as el; print(el.always_on(), el.is_enabled())"
    out = _run(code, f"always-on,report={report}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False"]
    assert "could not start" in out.stderr and str(report) in out.stderr
    assert out.stderr.count("ConfigWarning") == 1


def test_cli_version_under_a_bad_value():
    exe = os.path.join(os.path.dirname(sys.executable), "esper-lifetimes")
    out = _run("", "bogus", exe, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("esper-lifetimes ")


def test_config_imports_neither_torch_nor_the_engine():
    code = (
        "import sys, esper_lifetimes.config as c\n"
        "c.parse('always-on,sample=0.5')\n"
        "print('torch' in sys.modules, 'esper_lifetimes._core' in sys.modules)\n"
    )
    assert _run(code, None).stdout.split() == ["False", "False"]


def test_parse_grammar():
    assert config.parse("") == ("on", {})
    assert config.parse(" Always_On , sample=0.5, max-window-ops=3") == (
        "always-on",
        {"sample": 0.5, "max_window_ops": 3},
    )
    assert config.parse("off,whatever") == ("off", {})
    assert config.parse("on,emulate=cuda") == ("on", {"emulate": "cuda"})
    with pytest.raises(ValueError, match="'on'"):
        config.parse("on,sample=0.5")  # sampling needs a run-wide tracker
    with pytest.raises(ValueError, match="'gpu'"):
        config.parse("full,emulate=gpu")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"mode": "always-on", "sample": "0.1"}, "'0.1'"),
        ({"mode": "always-on", "sample": True}, "True"),
        ({"mode": "sometimes"}, "'sometimes'"),
        ({"mode": 1}, "1"),
        ({"mode": "always-on", "seed": 1.5}, "1.5"),
        ({"mode": "always-on", "max_window_ops": 0}, "0"),
        ({"mode": "always-on", "report": 7}, "7"),
        ({"mode": "full", "emulate": "rocm"}, "'rocm'"),
        ({"sample": 0.5}, "sample=0.5"),
    ],
)
def test_enable_bad_values_are_config_errors(kwargs, named):
    with pytest.raises(el.ConfigError) as info:
        el.enable(**kwargs)
    assert isinstance(info.value, el.LifetimesError)
    assert named in str(info.value)
    assert el.always_on() is None


def test_enable_unwritable_report_is_a_config_error(tmp_path):
    with pytest.raises(el.ConfigError, match="missing-dir"):
        el.enable(mode="always-on", report=str(tmp_path / "missing-dir" / "r.jsonl"))
    assert el.always_on() is None


def test_enable_accepts_the_env_spellings():
    assert el.enable("ON") is None and el.is_enabled()
    assert el.enable("disabled") is None and not el.is_enabled()
    tr = el.enable("Always_On", sample=1)
    assert tr is modes.always_on() and tr.mode == "always-on"


def test_emulate_cuda_from_the_environment_and_disable_leaves_it():
    code = (
        "import esper_lifetimes, torch\n"
        "print(torch.cuda.is_available())\n"
        "esper_lifetimes.disable()\n"
        "print(torch.cuda.is_available())\n"
    )
    out = _run(code, "on,emulate=cuda")
    assert out.returncode == 0, out.stderr
    real = _run("import torch; print(torch.cuda.is_available())", None).stdout.split()
    assert out.stdout.split() == ["True", *real]
