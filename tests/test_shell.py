"""kvm-harness shell's exit code (harness/shell.py), without a VM."""

from harness import shell


def test_the_shells_exit_code_never_passes_the_guests_status_on(capsys):
    assert shell.own_exit_code(0, "") == 0
    assert shell.own_exit_code(7, "") == 1 and "the guest command exited 7; kvm-harness exits 1" in capsys.readouterr().err
    assert shell.own_exit_code(None, "timed out after 240 s (--timeout)") == 1
    assert "timed out after 240 s" in capsys.readouterr().err


def test_a_commands_output_is_kept_to_its_head_and_tail():
    from harness.guest import Bounded
    b = Bounded(limit=10)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        b.add(chunk)
    text = b.text()
    assert text.startswith("abcde\n[kvm-harness: 16 bytes of this output dropped here")
    assert text.endswith("]\nvwxyz")
    small = Bounded(limit=100)
    small.add(b"all of it")
    assert small.text() == "all of it"
