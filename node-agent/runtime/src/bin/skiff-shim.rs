//! `skiff-shim`: the per-container supervisor (`run`) and exec helper (`exec`). All
//! logic lives in `skiff_runtime::shim`.

fn main() {
    std::process::exit(skiff_runtime::shim::main());
}
