//! The committed CRD YAML must be what the types generate: a change to
//! `crds/src` that is not followed by `make crds` fails here.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for (file, crd) in gatehouse_crds::crds() {
        let want = gatehouse_crds::crd_yaml(&crd).expect("CRD serialises to YAML");
        for dir in ["config/crd/bases", "charts/gatehouse/crds"] {
            let path = root.join(dir).join(file);
            match std::fs::read_to_string(&path) {
                Ok(have) if have == want => {}
                Ok(_) => stale.push(format!("{dir}/{file} differs from the types")),
                Err(e) => stale.push(format!("{dir}/{file} cannot be read: {e}")),
            }
        }
    }
    assert!(
        stale.is_empty(),
        "the committed CRDs are stale; run `make crds` (or `cargo run -p gatehouse-crds --bin crdgen`) and commit the result:\n  {}",
        stale.join("\n  ")
    );
}
