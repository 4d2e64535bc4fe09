//! Writes the Gatehouse CRDs to `config/crd/bases` and `charts/gatehouse/crds`.
//!
//! `crdgen` writes them; `crdgen --check` exits non-zero when a committed file
//! differs from what the types generate.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dirs = [root.join("config/crd/bases"), root.join("charts/gatehouse/crds")];
    let mut stale = Vec::new();
    for (file, crd) in gatehouse_crds::crds() {
        let yaml = match gatehouse_crds::crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("crdgen: cannot serialise {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &dirs {
            let path = dir.join(file);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    stale.push(path);
                }
            } else if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &yaml)) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !stale.is_empty() {
        for path in stale {
            eprintln!(
                "crdgen: {} differs from the types; run `make crds`",
                path.display()
            );
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
