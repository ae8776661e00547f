//! `--set key.path=value` overrides, applied to the TOML tree before it is
//! typed, and where a syntax error starts.

/// "(syntax, line L)": where a TOML syntax error starts, 1-based.
pub(super) fn syntax_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => format!("(syntax, line {})", text[..r.start.min(text.len())].matches('\n').count() + 1),
        None => "(syntax)".into(),
    }
}

/// Applies `a.b.c=value`; the value is parsed as TOML (number, bool, array…)
/// and taken as a plain string when it is not valid TOML.
pub(super) fn apply_override(root: &mut toml::Value, spec: &str) -> std::result::Result<(), String> {
    let (key, raw) = spec.split_once('=').ok_or("expected key=value")?;
    let key = key.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key path"));
    }
    let mut node = root;
    for p in &parts[..parts.len() - 1] {
        let table = node.as_table_mut().ok_or_else(|| format!("`{p}` is not a table"))?;
        node = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node.as_table_mut().ok_or_else(|| format!("parent of `{key}` is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}
