//! Compiles the small C shim (`src/image/jpeg_hooks.c`) that reaches libjpeg's internal
//! colour-converter pointer through libjpeg's own headers, which mozjpeg-sys exports as
//! `DEP_JPEG_INCLUDE` (its generated `jconfig.h` plus the vendored sources).

fn main() {
    let src = "src/image/jpeg_hooks.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=DEP_JPEG_INCLUDE");
    let include = std::env::var_os("DEP_JPEG_INCLUDE")
        .expect("mozjpeg-sys exports its include directories (links = \"jpeg\")");
    let mut build = cc::Build::new();
    for dir in std::env::split_paths(&include) {
        build.include(dir);
    }
    build.file(src).warnings(true).compile("llava_jpeg_hooks");
}
