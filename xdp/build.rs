//! Compiles the BPF programs in `bpf/*.bpf.c` with clang (`-target bpf`) and generates their
//! libbpf-rs skeletons into `OUT_DIR`. Needs clang, libelf, zlib and pkg-config
//! (`scripts/setup.sh` installs them).

use libbpf_cargo::SkeletonBuilder;
use std::env;
use std::path::PathBuf;

const PROGRAMS: &[&str] = &["steer", "tunnel"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // Debian keeps <asm/types.h> (pulled in by <linux/bpf.h>) under the multiarch directory,
    // which `clang -target bpf` does not search by itself.
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        other => other,
    };
    let include = format!("-I/usr/include/{multiarch}");
    println!("cargo:rerun-if-changed=bpf/common.h");
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let skel = out.join(format!("{name}.skel.rs"));
        if let Err(e) = SkeletonBuilder::new()
            .source(&src)
            .clang_args([include.as_str(), "-Wall", "-Wno-unused-function"])
            .build_and_generate(&skel)
        {
            panic!("building {src} failed: {e:#}\n(needs clang, libelf-dev, zlib1g-dev, pkg-config: run scripts/setup.sh)");
        }
    }
}
