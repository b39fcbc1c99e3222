"""kvm-harness: verify a KVM MMU patch series on a real kernel under QEMU."""

__version__ = "0.1.0"
