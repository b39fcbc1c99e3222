import pytest

from harness import kconfig
from harness.errors import UsageError


def test_parse_fragment_set_and_unset(tmp_path):
    f = tmp_path / "x.config"
    f.write_text("CONFIG_KVM=y\n# CONFIG_KASAN is not set\nCONFIG_NR_CPUS=8\n# a comment\n")
    assert kconfig.parse_fragment(f) == {"CONFIG_KVM": "y", "CONFIG_KASAN": "n", "CONFIG_NR_CPUS": "8"}


def test_verify_names_symbol_and_unmet_dependency(tmp_path):
    src = tmp_path / "src"
    (src / "drivers/net").mkdir(parents=True)
    (src / "init").mkdir()
    (src / "init/Kconfig").write_text("config EXPERT\n\tbool\n")
    (src / "drivers/net/Kconfig").write_text(
        "config VIRTIO_NET\n\ttristate \"Virtio network driver\"\n\tdepends on VIRTIO\n\tselect NET_FAILOVER\n")
    frag = tmp_path / "want.config"
    frag.write_text("CONFIG_VIRTIO_NET=y\nCONFIG_EXPERT=y\nCONFIG_NOPE=y\n")
    final = "CONFIG_EXPERT=y\n# CONFIG_VIRTIO_NET is not set\n"
    problems = kconfig.verify(src, final, [frag], "defconfig")
    assert any(p.startswith("CONFIG_VIRTIO_NET: requested y, got not set") and "depends on VIRTIO" in p
               for p in problems), problems
    assert any("CONFIG_NOPE" in p and "no such symbol" in p for p in problems)
    assert not any("CONFIG_EXPERT" in p for p in problems)


def test_kvm_guest_exemptions_only_on_trim(tmp_path):
    src = tmp_path / "src"
    (src / "init").mkdir(parents=True)
    (src / "init/Kconfig").write_text("")
    frag = tmp_path / "kvm_guest.config"
    frag.write_text("CONFIG_SCSI_VIRTIO=y\n")
    assert kconfig.verify(src, "", [frag], "trim") == []
    assert kconfig.verify(src, "", [frag], "defconfig") != []


def test_request_validation(tmp_path):
    with pytest.raises(UsageError, match="config fragment not found"):
        kconfig.ConfigRequest("trim", [tmp_path / "missing.config"]).validate()
    bad = tmp_path / "bad.config"
    bad.write_text("KVM=y\n")
    with pytest.raises(UsageError, match=r"bad.config:1: not a Kconfig line"):
        kconfig.ConfigRequest("trim", [bad]).validate()
    with pytest.raises(UsageError, match="unknown config base"):
        kconfig.ConfigRequest("allyes").validate()


def test_shipped_fragments_are_kconfig():
    for f in [*kconfig.BASES["trim"][1:], *kconfig.HARNESS_FRAGMENTS]:
        assert kconfig.parse_fragment(f), f
    assert kconfig.parse_fragment(kconfig.CONFIGS_DIR / "kvm.config")["CONFIG_KVM_PROVE_MMU"] == "y"
