//! Strict TOML files with line numbers: the plan, lab scenarios and the
//! campaign configuration all refuse unknown keys and impossible values,
//! naming the line. `toml` reports byte spans ([`toml::Spanned`]); people
//! read lines.

/// The 1-based line of byte offset `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A message about the value or key at `span`, prefixed with its line.
pub fn at_line(
    text: &str,
    span: std::ops::Range<usize>,
    message: impl std::fmt::Display,
) -> String {
    format!("line {}: {message}", line_of(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_lines_from_one() {
        let text = "a = 1\nb = 2\n\nc = 3";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, text.find('c').unwrap()), 4);
        assert_eq!(line_of(text, 10_000), 4);
        assert_eq!(at_line(text, 6..7, "bad"), "line 2: bad");
    }
}
