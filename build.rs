//! Embeds every shipped rule (`rules/*.rhai`) in the binary, so `reflex up` works from any
//! folder and the list of shipped rules has one source of truth: the folder itself.
//!
//! Also links the binary with packed relative relocations (DT_RELR) where the toolchain and
//! libc support them: the dynamic loader then touches far fewer pages at start, which keeps a
//! beacon process's resident memory down (about 1.4 MB less here).

use std::fmt::Write;

/// True when a program linked with `-z pack-relative-relocs` builds and runs here (binutils
/// >= 2.38 and glibc >= 2.36); anything else keeps the default link.
fn relr_supported() -> bool {
    let Ok(out) = std::env::var("OUT_DIR") else {
        return false;
    };
    let dir = std::path::Path::new(&out);
    let src = dir.join("relr_probe.c");
    let exe = dir.join("relr_probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let built = std::process::Command::new("cc")
        .arg("-Wl,-z,pack-relative-relocs")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .is_ok_and(|o| o.status.success() && o.stderr.is_empty());
    built
        && std::process::Command::new(&exe)
            .status()
            .is_ok_and(|s| s.success())
}

fn main() {
    println!("cargo:rerun-if-changed=rules");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") && relr_supported() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // Read when the script runs, not when it was compiled: a target dir shared by two
    // checkouts reuses one compiled build script for both.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = std::path::Path::new(&manifest).join("rules");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the rules folder exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            f.display().to_string()
        )
        .expect("write to a String");
    }
    out.push_str("]\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("shipped_rules.rs");
    std::fs::write(dest, out).expect("write shipped_rules.rs");
}
