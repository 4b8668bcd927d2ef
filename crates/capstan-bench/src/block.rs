//! The benchmark results blocks of docs/benchmarks.md: each tool rewrites only its own block,
//! delimited by HTML comments, and appends it when missing.

use std::path::Path;

/// Replaces the text between `start` and `end` in `path` with `table` (or appends the block).
pub fn write_block(path: &Path, start: &str, end: &str, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{start}\n{table}{end}");
    let new = match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new)?;
    Ok(())
}
