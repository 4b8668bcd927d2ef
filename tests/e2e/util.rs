//! Small text helpers for asserting on kubectl's human-readable output.

use base64::Engine as _;

/// Standard base64, as Secret `data` carries it.
pub fn base64(plain: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(plain)
}

/// Decodes standard base64 (kubeconfig `*-data` fields); panics on invalid input.
pub fn base64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("invalid base64 {text:?}: {e}"))
}

/// Collapses every run of whitespace into one space (kubectl aligns columns with spaces).
pub fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first line of `text` whose whitespace-separated columns start with `columns`.
pub fn find_row<'a>(text: &'a str, columns: &[&str]) -> Option<&'a str> {
    text.lines().find(|line| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells.len() >= columns.len() && cells.iter().zip(columns).all(|(a, b)| a == b)
    })
}

/// A one-key ConfigMap manifest, for `kubectl create -f -`.
pub fn configmap_yaml(namespace: &str, name: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         data:\n  {key}: \"{value}\"\n"
    )
}

#[test]
fn find_row_matches_whole_cells_only() {
    let text = "NAME SHORTNAMES\nconfigmaps   cm   v1   true   ConfigMap\n";
    assert!(find_row(text, &["configmaps", "cm", "v1"]).is_some());
    assert!(find_row(text, &["configmap", "cm"]).is_none());
    assert_eq!(squash("  a \t b\n c "), "a b c");
    assert_eq!(base64("admin"), "YWRtaW4=");
}
