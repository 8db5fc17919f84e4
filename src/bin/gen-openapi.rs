//! Writes the OpenAPI document the handlers generate to `openapi/openapi.json`
//! (`cargo run --bin gen-openapi`). A test fails when the committed file differs.

fn main() -> std::io::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    std::fs::write(&path, batchlens::api::openapi_json())?;
    println!("wrote {}", path.display());
    Ok(())
}
