//! Link flags for weft's binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Pack the relative relocations of the position-independent binaries (DT_RELR, glibc
        // 2.36+, binutils 2.38+): the 0.5 MB `.rela.dyn` table the loader reads at every start,
        // and keeps resident in every agent, becomes a few kilobytes.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
