//! The committed CRD YAML in `crds/` is what the Rust types generate. When this fails, run
//! `make crds` (or `cargo run -p mqtt-dsp-operator -- crdgen --out crds`) and commit the result.

use std::path::Path;

#[test]
fn committed_crds_match_the_api_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut expected_files = Vec::new();
    for (file, crd) in mqtt_dsp_operator::crd::all() {
        let generated = mqtt_dsp_operator::crd::to_yaml(&crd).unwrap();
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(committed == generated, "crds/{file} is out of date with operator/src/api: run `make crds` and commit");
        expected_files.push(file.to_owned());
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "crds/ holds a file no type generates");
}

#[test]
fn committed_field_reference_matches_the_crds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/crd-reference.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == mqtt_dsp_operator::crd::reference_markdown(),
        "docs/crd-reference.md is out of date: run `make crds` and commit"
    );
}
