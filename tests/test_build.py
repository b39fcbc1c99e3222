from harness.build import first_compiler_error

LOG = """  CC      arch/x86/kvm/mmu/page_track.o
  CC      arch/x86/kvm/mmu/mmu.o
/root/.cache/kvm-harness/sources/tarball-x/src/arch/x86/kvm/mmu/mmu.c: In function 'mmu_spte_set':
/root/.cache/kvm-harness/sources/tarball-x/src/arch/x86/kvm/mmu/mmu.c:487:9: error: implicit declaration of function 'mmu_log_possible_writable_spte' [-Werror=implicit-function-declaration]
  487 |         mmu_log_possible_writable_spte(sptep, 0ull, new_spte);
/root/.cache/kvm-harness/sources/tarball-x/src/arch/x86/kvm/mmu/mmu.c:500:1: error: second error
make[5]: *** [/src/scripts/Makefile.build:229: arch/x86/kvm/mmu/mmu.o] Error 1
"""


def test_first_compiler_error_has_file_and_line():
    e = first_compiler_error(LOG)
    assert e.endswith("mmu.c:487: error: implicit declaration of function 'mmu_log_possible_writable_spte' "
                      "[-Werror=implicit-function-declaration]")


def test_make_error_when_no_compiler_error():
    assert first_compiler_error("foo\nmake: *** [Makefile:1: all] Error 2\n") == "make: *** [Makefile:1: all] Error 2"
