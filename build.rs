//! Sets `cfg(buckshot_native)` where the native backend builds: on Linux,
//! unless `--cfg buckshot_portable` asks for the portable one there (see
//! `src/sys/mod.rs`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(buckshot_native)");
    println!("cargo::rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let portable = std::env::var_os("CARGO_CFG_BUCKSHOT_PORTABLE").is_some();
    if linux && !portable {
        println!("cargo::rustc-cfg=buckshot_native");
    }
}
