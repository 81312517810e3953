//! Puts the directory of the workspace's `linker.ld` on the linker's search path, so a
//! guest binary links with `-C link-arg=-Tlinker.ld` (as `cargo xtask build` passes)
//! wherever the framework crates live, in this workspace or as a dependency.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let script = root.join("linker.ld");
    assert!(script.is_file(), "{} is missing", script.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-search=native={}", root.display());
}
