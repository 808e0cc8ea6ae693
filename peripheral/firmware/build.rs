//! Puts the memory map of the target being built (`memory/<target>.x`) where
//! cortex-m-rt's `link.x` looks for `memory.x`.
//!
//! The maps live under `memory/`, not at the package root: the linker searches
//! the working directory first, so a `memory.x` there would silently win over
//! the one for the target.
use std::{env, fs, path::PathBuf};

fn main() {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let map = PathBuf::from("memory").join(format!("{target}.x"));
    assert!(map.exists(), "no memory map for {target}: add {}", map.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy(&map, out.join("memory.x")).expect("copy the memory map");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory");
}
