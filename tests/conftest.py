import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A tiny real git repository with one committed file (for apply tests)."""
    repo = tmp_path / "repo"
    (repo / "arch/x86/kvm/mmu").mkdir(parents=True)
    (repo / "arch/x86/kvm/mmu/mmu.c").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    return repo
