import subprocess
from pathlib import Path

import pytest

from harness import series
from harness.errors import ApplyError, UsageError
from harness.source import Workspace

REPO = Path(__file__).resolve().parent.parent


def _ws(repo: Path) -> Workspace:
    base = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return Workspace(src=repo, obj=repo.parent / "obj", lock=repo.parent / "lock", base_commit=base)


def _series(tmp_path: Path, name: str, patches: dict[str, str]) -> Path:
    d = tmp_path / name
    d.mkdir()
    for fn, text in patches.items():
        (d / fn).write_text(text)
    (d / "series").write_text("\n".join(patches) + "\n")
    return d


GOOD = """From: Someone <s@example.invalid>
Subject: [PATCH] change line 20

---
 arch/x86/kvm/mmu/mmu.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/arch/x86/kvm/mmu/mmu.c b/arch/x86/kvm/mmu/mmu.c
--- a/arch/x86/kvm/mmu/mmu.c
+++ b/arch/x86/kvm/mmu/mmu.c
@@ -19,3 +19,3 @@
 line 19
-line 20
+line twenty
 line 21
--
2.39.5
"""


def test_load_series_errors_name_the_path(tmp_path):
    with pytest.raises(UsageError, match="series directory not found"):
        series.load_series(tmp_path / "nope")
    (tmp_path / "noseries").mkdir()
    with pytest.raises(UsageError, match="no `series` file"):
        series.load_series(tmp_path / "noseries")
    d = _series(tmp_path, "empty", {})
    (d / "series").write_text("# only a comment\n\n")
    with pytest.raises(UsageError, match="series is empty"):
        series.load_series(d)
    d = tmp_path / "missing"
    d.mkdir()
    (d / "series").write_text("0001-there.patch\n")
    with pytest.raises(UsageError, match=r"series:1: names a missing patch: .*0001-there.patch"):
        series.load_series(d)


def test_load_series_reads_quilt_options_and_hashes(tmp_path):
    d = _series(tmp_path, "s", {"a.patch": GOOD})
    (d / "series").write_text("a.patch -p1\n")
    s = series.load_series(d)
    assert [p.path.name for p in s.patches] == ["a.patch"]
    assert len(s.patches[0].sha256) == 64


def test_apply_good_patch_makes_a_commit(tmp_path, git_repo):
    s = series.load_series(_series(tmp_path, "s", {"0001-x.patch": GOOD}))
    ws = _ws(git_repo)
    applied = series.apply_series(ws, [s], tmp_path / "log")
    assert applied[0]["patch"] == "0001-x.patch" and applied[0]["commit"] != ws.base_commit
    assert "line twenty" in (git_repo / "arch/x86/kvm/mmu/mmu.c").read_text()


def test_patch_on_missing_file_names_file(tmp_path, git_repo):
    bad = GOOD.replace("arch/x86/kvm/mmu/mmu.c", "arch/x86/kvm/mmu.c")
    s = series.load_series(_series(tmp_path, "s", {"0002-old.patch": bad}))
    with pytest.raises(ApplyError) as e:
        series.apply_series(_ws(git_repo), [s], tmp_path / "log")
    assert "arch/x86/kvm/mmu.c" in str(e.value) and "s/0002-old.patch" in str(e.value)
    assert e.value.files == ["arch/x86/kvm/mmu.c"]


def test_patch_with_failing_hunk_names_hunk(tmp_path, git_repo):
    bad = GOOD.replace(" line 19\n-line 20", " line 19\n-line XX")
    s = series.load_series(_series(tmp_path, "s", {"0003-hunk.patch": bad}))
    with pytest.raises(ApplyError) as e:
        series.apply_series(_ws(git_repo), [s], tmp_path / "log")
    assert "arch/x86/kvm/mmu/mmu.c" in str(e.value)


def test_mangled_seed_is_refused_as_corrupt_naming_the_line(tmp_path, git_repo):
    seed = REPO / "kernel-patches/fast-write-protect-v2/as-received/000_b4ca56b4f44c0abb.txt"
    assert seed.is_file(), f"the seed as received must be kept in {seed}"
    s = series.load_series(seed.parent)
    with pytest.raises(ApplyError) as e:
        series.apply_series(_ws(git_repo), [s], tmp_path / "log")
    assert "corrupt patch" in str(e.value)
    assert e.value.line is not None and e.value.line > 0
    assert f"line {e.value.line}" in str(e.value)


def test_explain_failure_on_captured_git_am_output():
    out = ("Applying: KVM: MMU: introduce possible_writable_spte_bitmap\n"
           "error: arch/x86/kvm/mmu.c: does not exist in index\n"
           "error: patch failed: arch/x86/include/asm/kvm_host.h:114\n"
           "error: arch/x86/include/asm/kvm_host.h: patch does not apply\n"
           "Patch failed at 0001 KVM: MMU: introduce possible_writable_spte_bitmap\n")
    p = series.Patch(Path("fast-write-protect-v2/0002-x.patch"), "0" * 64)
    err = series.explain_failure(p, out)
    assert err.files == ["arch/x86/include/asm/kvm_host.h", "arch/x86/kvm/mmu.c"] or \
        set(err.files) == {"arch/x86/include/asm/kvm_host.h", "arch/x86/kvm/mmu.c"}
    assert "arch/x86/kvm/mmu.c: does not exist in index" in str(err)


def test_default_series_list(tmp_path):
    (tmp_path / "a").mkdir()
    lst = tmp_path / "default"
    lst.write_text("# comment\na\n\n")
    assert series.load_default_list(lst) == [(tmp_path / "a").resolve()]


# --- series as reviewers receive them (issue 13 item 1): inputs in tests/data/series-intake, copied from the
# project's field cases (they change a file of numbered lines, like the git_repo fixture's) and the real 2019 mails

INTAKE = REPO / "tests" / "data" / "series-intake"


def _mmu(repo: Path) -> str:
    return (repo / "arch/x86/kvm/mmu/mmu.c").read_text()


def _log(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True, text=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("case", ["crlf-mail", "quoted-printable-mail", "base64-mail", "series dir with spaces"])
def test_mails_git_am_applies_are_applied(tmp_path, git_repo, case):
    before = _mmu(git_repo)
    applied = series.apply_series(_ws(git_repo), [series.load_series(INTAKE / case)], tmp_path / "log")
    assert applied and _mmu(git_repo) != before
    assert "\r" not in _mmu(git_repo)  # a CRLF mail changes the file, not its line endings


def test_an_mbox_with_a_cover_letter_applies_both_patches_and_skips_the_letter(tmp_path, git_repo, caplog):
    caplog.set_level("INFO", logger="kvm-harness")
    applied = series.apply_series(_ws(git_repo), [series.load_series(INTAKE / "mbox-with-cover-letter")],
                                  tmp_path / "log")
    assert [a["patch"] for a in applied] == ["v1_20170703_dev_field_case_02.mbox [2/3]",
                                             "v1_20170703_dev_field_case_02.mbox [3/3]"]
    assert _log(git_repo)[:2] == ["KVM: MMU: field case 02, second change", "KVM: MMU: field case 02, first change"]
    assert ("skipped mbox-with-cover-letter/v1_20170703_dev_field_case_02.mbox mail 1 ([PATCH 0/2] KVM: MMU: field"
            " case 02 (cover letter)): a mail without a diff (a cover letter)") in caplog.text


def test_quilt_strip_options_are_honoured(tmp_path, git_repo):
    s = series.load_series(INTAKE / "quilt-options")
    assert [(p.path.name, p.strip) for p in s.patches] == [("mmu-comment-p0.diff", 0), ("mmu-comment-p1.patch", 1)]
    applied = series.apply_series(_ws(git_repo), [s], tmp_path / "log")
    assert len(applied) == 2


def test_a_quilt_option_that_is_not_a_strip_level_is_refused_by_name_before_any_work(tmp_path):
    d = _series(tmp_path, "s", {"a.patch": GOOD})
    (d / "series").write_text("a.patch -R\n")
    with pytest.raises(UsageError, match=r"series:1: quilt option '-R' of a.patch is not supported \(only -pN\)"):
        series.load_series(d)


def test_a_mail_file_or_a_directory_without_a_series_file_is_a_series(tmp_path, git_repo):
    one = series.load_series(INTAKE / "crlf-mail" / "0001-field-case-03.eml")
    assert one.name == "0001-field-case-03.eml" and len(one.patches) == 1
    d = tmp_path / "format-patch"
    d.mkdir()
    (d / "0001-x.patch").write_text(GOOD)
    (d / "README").write_text("not a patch")
    assert [p.path.name for p in series.load_series(d).patches] == ["0001-x.patch"]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UsageError, match="no `series` file and no patch or mail"):
        series.load_series(tmp_path / "nothing")


def test_the_2019_v1_mbx_on_a_tree_without_the_old_file_names_the_first_patch_and_the_file(tmp_path, git_repo):
    """The real v1 repost as one b4-style .mbx (cover letter + 4 patches, 8-bit mail): the cover letter is
    skipped and the first patch is refused because arch/x86/kvm/mmu.c (v5.0's) does not exist, never 'corrupt'."""
    with pytest.raises(ApplyError) as e:
        series.apply_series(_ws(git_repo), [series.load_series(INTAKE / "fast-write-protect-2019-v1.mbx")],
                            tmp_path / "log")
    msg = str(e.value)
    assert msg.startswith("patch fast-write-protect-2019-v1.mbx mail 2 ([PATCH 1/4] KVM: MMU: correct the behavior"
                          " of mmu_spte_update_no_track) does not apply: arch/x86/kvm/mmu.c"), msg
    assert "corrupt" not in msg and "arch/x86/kvm/mmu.c" in e.value.files
    assert not (git_repo / ".git" / "rebase-apply").exists()


def test_the_reason_is_gits_first_error_never_a_hint():
    out = ("Applying: x\nerror: patch failed: arch/x86/kvm/mmu/mmu.c:19\nhint: Use 'git am --show-current-patch=diff'\n"
           "Patch failed at 0001 x\nWhen you have resolved this problem, run \"git am --continue\".\n"
           "To restore the original branch and stop patching, run \"git am --abort\".\n")
    assert series.first_error(out) == "error: patch failed: arch/x86/kvm/mmu/mmu.c:19"
    assert series.first_error("To restore the original branch and stop patching, run \"git am --abort\".\n") == ""
