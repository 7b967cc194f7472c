//! The CPU check run before anything else: a build for x86-64-v3 (the
//! project's default, set in `.cargo/config.toml`) may use AVX2, BMI1/2,
//! FMA, LZCNT and MOVBE anywhere, so on an older CPU it would die of an
//! illegal instruction at some random point. This names the missing
//! features and how to rebuild instead.
//!
//! `is_x86_feature_detected!` cannot tell: for a feature enabled at compile
//! time it answers `true` without asking the CPU. CPUID itself takes
//! `unsafe` before Rust 1.95 (this crate forbids it and supports 1.89), so
//! the check reads the kernel's list of the CPU's features,
//! `/proc/cpuinfo`, which also leaves out AVX when the kernel does not save
//! its registers. Where that file cannot be read there is nothing to check
//! against, and the check stays silent.

// Without AVX2 enabled (a build for an older CPU) there is nothing to check.
#![cfg_attr(not(target_feature = "avx2"), allow(dead_code))]

use std::io::BufRead;

/// The features an x86-64-v3 build may use (x86-64-v2's with them), each
/// with its name in `/proc/cpuinfo`.
const NEEDED: &[(&str, &str)] = &[
    // x86-64-v2
    ("cx16", "cx16"),
    ("lahf_lm", "lahf_lm"),
    ("popcnt", "popcnt"),
    ("sse3", "pni"),
    ("ssse3", "ssse3"),
    ("sse4.1", "sse4_1"),
    ("sse4.2", "sse4_2"),
    // x86-64-v3
    ("avx", "avx"),
    ("avx2", "avx2"),
    ("bmi1", "bmi1"),
    ("bmi2", "bmi2"),
    ("f16c", "f16c"),
    ("fma", "fma"),
    ("lzcnt", "abm"),
    ("movbe", "movbe"),
];

/// The features of [`NEEDED`] that the `flags` list (space-separated, as
/// `/proc/cpuinfo` gives it) lacks.
fn missing(flags: &str) -> Vec<&'static str> {
    let has = |name: &str| flags.split_ascii_whitespace().any(|f| f == name);
    NEEDED
        .iter()
        .filter(|(_, cpuinfo_name)| !has(cpuinfo_name))
        .map(|(name, _)| *name)
        .collect()
}

/// The first CPU's feature list: the value of the first `flags` line.
fn flags_of(cpuinfo: impl BufRead) -> Option<String> {
    cpuinfo.lines().map_while(Result::ok).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "flags").then(|| value.trim().to_string())
    })
}

/// Exits with a message naming what is missing when this build needs CPU
/// features this machine lacks. Called first thing in `main`.
pub fn check() {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let Ok(file) = std::fs::File::open("/proc/cpuinfo") else {
            return;
        };
        let Some(flags) = flags_of(std::io::BufReader::new(file)) else {
            return;
        };
        let lacking = missing(&flags);
        if !lacking.is_empty() {
            eprintln!(
                "rampart: this build uses x86-64-v3 CPU features (AVX2, BMI2, FMA, …) and this \
                 CPU lacks: {}.\nRebuild for a plain x86-64 CPU with \
                 `RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build --release` (README.md).",
                lacking.join(", ")
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &str = "fpu vme sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt avx \
                       f16c lahf_lm abm avx2 bmi1 bmi2";

    #[test]
    fn a_cpu_with_every_feature_lacks_none() {
        assert!(missing(ALL).is_empty());
    }

    #[test]
    fn missing_features_are_named() {
        // a Sandy Bridge: AVX without AVX2, BMI, FMA, LZCNT, MOVBE, F16C
        let old = "fpu sse sse2 pni ssse3 cx16 sse4_1 sse4_2 popcnt avx lahf_lm";
        assert_eq!(
            missing(old),
            vec!["avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe"]
        );
        // a name is a whole word: `avx512f` is not `avx`
        assert!(missing("avx512f avx2").contains(&"avx"));
        assert_eq!(missing("").len(), NEEDED.len());
    }

    #[test]
    fn the_flags_are_the_first_cpus() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 bmi2\n\
                    bugs\t\t: none\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(flags_of(text.as_bytes()).as_deref(), Some("fpu avx2 bmi2"));
        assert_eq!(flags_of(&b"processor\t: 0\n"[..]), None);
    }

    #[test]
    fn this_machine_runs_what_it_built() {
        // the tests themselves run the build's code: if they got here, the
        // CPU has what the build uses
        if cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
            if let Ok(f) = std::fs::File::open("/proc/cpuinfo") {
                let flags = flags_of(std::io::BufReader::new(f)).unwrap();
                assert!(missing(&flags).is_empty(), "{flags}");
            }
        }
    }
}
