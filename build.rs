//! With the `embedded` feature (the default): links the machine's libpython for the pyo3
//! executor and records its folder as an rpath, so the binary runs without LD_LIBRARY_PATH.

fn main() {
    #[cfg(feature = "embedded")]
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-changed=build.rs");
}
