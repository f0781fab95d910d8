from __future__ import annotations

import subprocess
import sys

from edge.cli import main


def test_top_level_help(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("gateway", "cloud", "sim", "provision"):
        assert name in out


def test_unknown_command(capsys) -> None:
    assert main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_gateway_help_does_not_import_cloud_deps() -> None:
    # Simulate a Pi without the cloud extra: block aiokafka/pyarrow/influxdb_client imports.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('aiokafka', 'pyarrow', 'influxdb_client', 'duckdb', 'cloud'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edge.cli import main\n"
        "raise SystemExit(main(['gateway', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "fieldlink gateway" in proc.stdout
