//! Generate `include/dserver.h` from the `extern "C"` items of `src/lib.rs` (cbindgen), so
//! the header never drifts from the library. It is written only when it changed, and is kept
//! in the tree for C users who do not run cargo.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let cfg = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let out = format!("{dir}/include/dserver.h");
    match cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(cfg)
        .generate()
    {
        Ok(b) => {
            b.write_to_file(out);
        }
        Err(e) => panic!("generating the C header: {e}"),
    }
}
