import subprocess
import sys


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "services.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("wakeline ")
    out = subprocess.run([sys.executable, "-m", "services.cli", "--help"], capture_output=True, text=True, check=True)
    assert "proto" in out.stdout
