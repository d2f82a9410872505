//! The checked-in header, include/copydata.h, is what cbindgen generates
//! from the sources now. After changing the C API, regenerate it with
//! `COPYDATA_UPDATE_HEADER=1 cargo test -p copydata-ffi --test header`.

// The header does not depend on the target; cbindgen is a host-only
// dev-dependency (see Cargo.toml).
#![cfg(not(windows))]

use std::path::Path;

#[test]
fn the_checked_in_header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("reading cbindgen.toml");
    // The crate's own sources only (`mod` items are followed): no `cargo
    // metadata` run, no dependencies parsed.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/copydata.h");
    let current = std::fs::read(&path).unwrap_or_default();
    if current == fresh {
        return;
    }
    if std::env::var_os("COPYDATA_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("writing include/copydata.h");
        eprintln!("updated {}", path.display());
        return;
    }
    let (fresh, current) = (String::from_utf8_lossy(&fresh), String::from_utf8_lossy(&current));
    let line = fresh
        .lines()
        .zip(current.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(fresh.lines().count().min(current.lines().count()));
    panic!(
        "include/copydata.h is out of date with the sources (first difference at line {}:\n  generated: {:?}\n  checked in: {:?});\n\
         regenerate it with COPYDATA_UPDATE_HEADER=1 cargo test -p copydata-ffi --test header",
        line + 1,
        fresh.lines().nth(line).unwrap_or("<end of file>"),
        current.lines().nth(line).unwrap_or("<end of file>"),
    );
}
