"""`fieldlink gateway check-config` / `fieldlink cloud check-config`: output and exit codes."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from cloud import checkconfig as cloud_check
from edge.cli import main as fieldlink
from gateway import checkconfig as gateway_check

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "0123456789abcdef-secret"
#: a problem line: "<file>: <key.path>: <reason>"
LINE = re.compile(r"^(?P<file>[^:]+): (?P<key>[^:\s]+): (?P<reason>.+)$")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FIELDLINK_"):
            monkeypatch.delenv(name)


def write(tmp_path: pathlib.Path, text: str, name: str = "gw.yaml") -> pathlib.Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def problem_lines(err: str, file: pathlib.Path) -> dict[str, str]:
    out = {}
    for line in err.splitlines():
        m = LINE.match(line)
        assert m, f"not a '<file>: <key>: <reason>' line: {line!r}"
        assert m["file"] == str(file)
        out[m["key"]] = m["reason"]
    return out


def test_demo_files_are_ok(capsys: pytest.CaptureFixture[str]) -> None:
    f = ROOT / "config" / "gateway.yaml"
    assert gateway_check.main([str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"OK: {f}"
    assert "gateway gw-demo-1" in out[1] and "uplink http://127.0.0.1:8700" in out[1]
    assert len(out) == 2
    f = ROOT / "config" / "cloud.yaml"
    assert cloud_check.main([str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"OK: {f}" and "ingest 127.0.0.1:8700 (1 gateway(s))" in out[1]
    assert "fieldlink-demo-secret" not in "\n".join(out)


def test_default_file_is_config_gateway_yaml(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert gateway_check.main([]) == 0
    assert capsys.readouterr().out.startswith("OK: config/gateway.yaml\n")
    assert cloud_check.main([]) == 0
    assert capsys.readouterr().out.startswith("OK: config/cloud.yaml\n")


def test_every_problem_is_printed_with_file_key_and_reason(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "mqtt: {port: 70000, prot: 1}\nbuffer: {max_bytes: lots}\n")
    assert gateway_check.main([str(f)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    problems = problem_lines(captured.err, f)
    assert set(problems) == {"mqtt.port", "mqtt.prot", "buffer.max_bytes"}
    assert "not a port number" in problems["mqtt.port"]
    assert "unknown key" in problems["mqtt.prot"]
    assert "not a size" in problems["buffer.max_bytes"]


def test_bad_yaml_and_missing_file(tmp_path: pathlib.Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "mqtt:\n  port: [1883\n")
    assert gateway_check.main([str(f)]) == 1
    assert problem_lines(capsys.readouterr().err, f)["<root>"].startswith(
        "invalid YAML at line 3")
    missing = tmp_path / "nope.yaml"
    assert gateway_check.main([str(missing)]) == 1
    assert "cannot read file" in problem_lines(capsys.readouterr().err, missing)["<root>"]


def test_secret_from_the_environment(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "gateway: {id: gw-7}\n")
    assert gateway_check.main([str(f)]) == 1
    reason = problem_lines(capsys.readouterr().err, f)["uplink.gateway_secret"]
    assert "FIELDLINK_UPLINK__GATEWAY_SECRET" in reason
    monkeypatch.setenv("FIELDLINK_UPLINK__GATEWAY_SECRET", SECRET)
    assert gateway_check.main([str(f)]) == 0
    out = capsys.readouterr().out
    assert "gateway gw-7" in out and SECRET not in out


def test_files_the_config_names_must_exist(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    f = write(tmp_path, f"""
uplink: {{gateway_secret: {SECRET}}}
mqtt: {{tls: {{enabled: true, certfile: cert.pem, keyfile: key.pem}}}}
alerts: {{rules_file: my-rules.yaml}}
""")
    lines = gateway_check.check(f)
    problems = {m["key"]: m["reason"] for m in map(LINE.match, lines) if m}
    assert len(problems) == len(lines) == 2
    assert problems["mqtt.tls.keyfile"] == f"file not found: {tmp_path / 'key.pem'}"
    assert problems["alerts.rules_file"] == f"file not found: {tmp_path / 'my-rules.yaml'}"
    # the default rules file may be absent: a gateway without local rules
    assert gateway_check.check(write(tmp_path, f"uplink: {{gateway_secret: {SECRET}}}\n")) == []


def test_rules_file_content_is_checked(tmp_path: pathlib.Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "my-rules.yaml"
    rules.write_text("version: 1\nrules:\n  - id: hot\n    match: {measurement: t}\n"
                     "    condition: 'p96 > 90'\n  - id: hot\n    match: {measurement: t}\n"
                     "    condition: 'max > 90'\n")
    f = write(tmp_path, f"uplink: {{gateway_secret: {SECRET}}}\n"
                        "alerts: {rules_file: my-rules.yaml}\n")
    assert gateway_check.main([str(f)]) == 1
    problems = problem_lines(capsys.readouterr().err, rules)
    assert problems["rules[0].condition"].startswith("unknown aggregate 'p96'")
    assert problems["rules[1].id"] == "duplicate id 'hot' (first used by rules[0])"
    # the default file name is checked too when the file is there
    (tmp_path / "rules.yaml").write_text("version: 2\n")
    lines = gateway_check.check(write(tmp_path, f"uplink: {{gateway_secret: {SECRET}}}\n",
                                      name="default-rules.yaml"))
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'rules.yaml'}: version: ")
    rules.write_text("version: 1\nrules: [{id: hot, match: {measurement: t}, "
                     "condition: 'max > 90'}]\n")
    assert gateway_check.main([str(f)]) == 0


def test_cloud_problems(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "kafka: {acks: 1}\ningest: {tls: {enabled: true, certfile: c.pem, "
                        "keyfile: k.pem}}\n", name="cloud.yaml")
    assert cloud_check.main([str(f)]) == 1
    assert "fixed to 'all'" in problem_lines(capsys.readouterr().err, f)["kafka.acks"]
    f = write(tmp_path, "ingest: {tls: {enabled: true, certfile: c.pem, keyfile: k.pem}}\n",
              name="cloud.yaml")
    assert cloud_check.main([str(f)]) == 1
    problems = problem_lines(capsys.readouterr().err, f)
    assert set(problems) == {"ingest.tls.certfile", "ingest.tls.keyfile"}


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    for module, prog in ((gateway_check, "gateway"), (cloud_check, "cloud")):
        with pytest.raises(SystemExit) as info:
            module.main(["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: fieldlink {prog} check-config" in out
        assert f"config/{prog}.yaml" in out and "Exit status" in out


def test_through_the_fieldlink_command(tmp_path: pathlib.Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "coap: {port: 99999}\n")
    assert fieldlink(["gateway", "check-config", str(f)]) == 1
    assert "coap.port" in problem_lines(capsys.readouterr().err, f)
    assert fieldlink(["cloud", "check-config", str(ROOT / "config" / "cloud.yaml")]) == 0


def test_exit_code_and_stderr_of_the_real_process(tmp_path: pathlib.Path) -> None:
    f = write(tmp_path, "http: {port: notaport}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDLINK_")}
    code = "from edge.cli import main; raise SystemExit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "gateway", "check-config", str(f)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    problems = problem_lines(proc.stderr, f)
    assert "valid integer" in problems["http.port"]
    proc = subprocess.run([sys.executable, "-c", code, "gateway", "check-config"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: config/gateway.yaml\n")
