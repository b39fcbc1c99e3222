"""What a kernel config is asked to be, as a value: a base and the user's fragments (ConfigRequest), and
the harness's own fragments that every config gets. No I/O: kconfig.py validates, hashes and applies it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIGS_DIR = Path(__file__).parent / "configs"
BASES = {
    # name: (make target, harness fragment applied first, fragment applied right after kvm_guest.config)
    "trim": ("tinyconfig", CONFIGS_DIR / "trim.config", CONFIGS_DIR / "trim-after-kvm-guest.config"),
    "defconfig": ("defconfig", None, None),
}
HARNESS_FRAGMENTS = [CONFIGS_DIR / "kvm.config", CONFIGS_DIR / "health.config", CONFIGS_DIR / "checks.config"]
KVM_GUEST = "kernel/configs/kvm_guest.config"


@dataclass
class ConfigRequest:
    """`base`: a name of BASES; `user_fragments`: --config files, applied last, in order."""

    base: str
    user_fragments: list[Path] = field(default_factory=list)

    def fragments(self, src: Path) -> list[Path]:
        """Every fragment applied to the tree at `src`, in order: the base's, kvm_guest.config, the harness's,
        the user's."""
        _, base_frag, after_guest = BASES[self.base]
        return ([base_frag] if base_frag else []) + [src / KVM_GUEST] + ([after_guest] if after_guest else []) + \
            HARNESS_FRAGMENTS + [f.resolve() for f in self.user_fragments]
