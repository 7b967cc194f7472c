//! The CPU check run before anything else: a build for x86-64-v3 (the
//! project's default, set in `.cargo/config.toml`) may use AVX2, BMI1/2,
//! FMA, LZCNT and MOVBE anywhere, so on an older CPU it would die of an
//! illegal instruction at some random point. This names the missing
//! features and how to rebuild instead.
//!
//! `is_x86_feature_detected!` cannot tell: for a feature enabled at compile
//! time it answers `true` without asking the CPU. So the check reads CPUID
//! itself.

// Without AVX2 enabled (a build for an older CPU) there is nothing to check.
#![cfg_attr(not(target_feature = "avx2"), allow(dead_code))]

/// The features an x86-64-v3 build may use, beyond x86-64-v2's, which it
/// also needs, with the CPUID bit that reports each.
#[cfg(target_arch = "x86_64")]
const NEEDED: &[(&str, Reg, u32)] = &[
    // x86-64-v2
    ("cx16", Reg::Leaf1Ecx, 13),
    ("popcnt", Reg::Leaf1Ecx, 23),
    ("sse3", Reg::Leaf1Ecx, 0),
    ("ssse3", Reg::Leaf1Ecx, 9),
    ("sse4.1", Reg::Leaf1Ecx, 19),
    ("sse4.2", Reg::Leaf1Ecx, 20),
    ("lahf_lm", Reg::Ext1Ecx, 0),
    // x86-64-v3
    ("avx", Reg::Leaf1Ecx, 28),
    ("fma", Reg::Leaf1Ecx, 12),
    ("movbe", Reg::Leaf1Ecx, 22),
    ("f16c", Reg::Leaf1Ecx, 29),
    ("avx2", Reg::Leaf7Ebx, 5),
    ("bmi1", Reg::Leaf7Ebx, 3),
    ("bmi2", Reg::Leaf7Ebx, 8),
    ("lzcnt", Reg::Ext1Ecx, 5),
];

/// Which CPUID output holds a feature bit.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Reg {
    /// Leaf 1, ECX.
    Leaf1Ecx,
    /// Leaf 7 (sub-leaf 0), EBX.
    Leaf7Ebx,
    /// Leaf 0x8000_0001, ECX.
    Ext1Ecx,
}

/// What CPUID and XGETBV said.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Default)]
struct Cpuid {
    leaf1_ecx: u32,
    leaf7_ebx: u32,
    ext1_ecx: u32,
    /// Whether the OS saves the extended register state (OSXSAVE).
    os_saves_avx: bool,
}

/// The x86-64-v3 features `id` lacks (an AVX the OS does not save counts
/// as missing, as do AVX2 and FMA then).
#[cfg(target_arch = "x86_64")]
fn missing(id: &Cpuid) -> Vec<&'static str> {
    NEEDED
        .iter()
        .filter(|(name, reg, bit)| {
            let word = match reg {
                Reg::Leaf1Ecx => id.leaf1_ecx,
                Reg::Leaf7Ebx => id.leaf7_ebx,
                Reg::Ext1Ecx => id.ext1_ecx,
            };
            let avx_state = matches!(*name, "avx" | "avx2" | "fma" | "f16c");
            word & (1 << bit) == 0 || (avx_state && !id.os_saves_avx)
        })
        .map(|(name, _, _)| *name)
        .collect()
}

/// Reads the CPU's feature bits.
#[cfg(target_arch = "x86_64")]
fn read_cpuid() -> Cpuid {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaves above the highest one the CPU reports are not asked for.
    let (max, max_ext) = (__cpuid(0).eax, __cpuid(0x8000_0000).eax);
    let leaf1 = if max >= 1 { __cpuid(1).ecx } else { 0 };
    Cpuid {
        leaf1_ecx: leaf1,
        leaf7_ebx: if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 },
        ext1_ecx: if max_ext >= 0x8000_0001 {
            __cpuid(0x8000_0001).ecx
        } else {
            0
        },
        // OSXSAVE (leaf 1 ECX bit 27): the OS saves the extended register
        // state; Linux then saves the AVX registers wherever the CPU has
        // them (reading XCR0 itself would take `unsafe`, which this crate
        // does without)
        os_saves_avx: leaf1 & (1 << 27) != 0,
    }
}

/// Exits with a message naming what is missing when this build needs CPU
/// features this machine lacks. Called first thing in `main`.
pub fn check() {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let lacking = missing(&read_cpuid());
        if !lacking.is_empty() {
            eprintln!(
                "rampart: this build uses x86-64-v3 CPU features (AVX2, BMI2, FMA, …) and this \
                 CPU lacks: {}.\nRebuild for a plain x86-64 CPU with \
                 `RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build --release` (README.md, \
                 \"Building for an older CPU\").",
                lacking.join(", ")
            );
            std::process::exit(1);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn all_bits() -> Cpuid {
        let mut id = Cpuid {
            os_saves_avx: true,
            ..Cpuid::default()
        };
        for (_, reg, bit) in NEEDED {
            match reg {
                Reg::Leaf1Ecx => id.leaf1_ecx |= 1 << bit,
                Reg::Leaf7Ebx => id.leaf7_ebx |= 1 << bit,
                Reg::Ext1Ecx => id.ext1_ecx |= 1 << bit,
            }
        }
        id
    }

    #[test]
    fn a_cpu_with_every_feature_lacks_none() {
        assert!(missing(&all_bits()).is_empty());
    }

    #[test]
    fn a_missing_feature_is_named() {
        let mut id = all_bits();
        id.leaf7_ebx &= !(1 << 5);
        id.leaf7_ebx &= !(1 << 8);
        assert_eq!(missing(&id), vec!["avx2", "bmi2"]);
    }

    #[test]
    fn avx_the_os_does_not_save_counts_as_missing() {
        let mut id = all_bits();
        id.os_saves_avx = false;
        assert_eq!(missing(&id), vec!["avx", "fma", "f16c", "avx2"]);
    }

    #[test]
    fn a_cpu_without_any_extension_lacks_them_all() {
        assert_eq!(missing(&Cpuid::default()).len(), NEEDED.len());
    }

    #[test]
    fn this_machine_runs_what_it_built() {
        // the tests themselves run the build's code: if they got here, the
        // CPU has what the build uses
        if cfg!(target_feature = "avx2") {
            assert!(missing(&read_cpuid()).is_empty());
        }
    }
}
