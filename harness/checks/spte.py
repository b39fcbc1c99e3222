"""The spte bits both checkers read (arch/x86/kvm/mmu/spte.h); the same bits in every spte format the
shadow MMU uses (legacy, EPT, NPT)."""

PT_PAGE_SIZE_MASK = 1 << 7  # a huge leaf spte
SPTE_BASE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF  # SPTE_BASE_ADDR_MASK: physical address bits 51:12
