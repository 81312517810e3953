//! CPU instructions a PV guest may use directly.

/// Read the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; Xen leaves CR4.TSD clear for PV guests.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the CPU supports the no-execute page bit (CPUID 0x8000_0001, EDX bit 20).
pub fn has_nx() -> bool {
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max < 0x8000_0001 {
        return false;
    }
    let leaf = core::arch::x86_64::__cpuid(0x8000_0001);
    leaf.edx & (1 << 20) != 0
}
