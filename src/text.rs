//! Text that comes from outside (SSH clients, the identity provider) made
//! safe to store, log and show. A NUL makes PostgreSQL refuse a whole row;
//! escape sequences and bidi overrides rewrite what a terminal or a
//! reviewer sees; a 100 kB user name does not fit an index. So every such
//! string passes through here, bounded, before it goes anywhere.

/// Characters that change how text is shown rather than what it says: C0
/// and C1 controls, DEL, zero-width characters and the bidi embeddings,
/// overrides and isolates.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// Marks text that was cut.
const CUT: char = '…';

/// `s` with every unsafe character replaced by U+FFFD and at most `max`
/// characters kept; a cut string ends in `…` (within the `max`).
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    for (i, c) in s.chars().enumerate() {
        if i + 1 == max && s.chars().nth(max).is_some() {
            out.push(CUT);
            break;
        }
        if i == max {
            break;
        }
        out.push(if is_unsafe(c) { '\u{FFFD}' } else { c });
    }
    out
}

/// The longest user name kept (longer ones cannot log in anyway).
pub const USER_NAME_MAX: usize = 64;

/// A user name as the audit trail and the lockout tables store it.
pub fn user_name(s: &str) -> String {
    clean(s, USER_NAME_MAX)
}

/// IdP text for an SSH prompt: unsafe characters dropped (OpenSSH prints
/// prompt texts raw to the terminal), at most `max` characters.
pub fn for_prompt(s: &str, max: usize) -> String {
    let kept: String = s.chars().filter(|c| !is_unsafe(*c)).collect();
    clean(&kept, max)
}

/// Two secrets (tokens, nonces) equal, compared in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_replaced() {
        assert_eq!(
            clean("a\0b\x1b[31mc\u{9b}d\u{7f}", 256),
            "a\u{FFFD}b\u{FFFD}[31mc\u{FFFD}d\u{FFFD}"
        );
        assert_eq!(
            clean("evil\u{202E}gpj.exe\u{2066}", 256),
            "evil\u{FFFD}gpj.exe\u{FFFD}"
        );
        assert_eq!(
            clean("zero\u{200B}width\u{FEFF}", 256),
            "zero\u{FFFD}width\u{FFFD}"
        );
        assert_eq!(clean("ålice ünïcode", 256), "ålice ünïcode");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let long = "x".repeat(100_000);
        let u = user_name(&long);
        assert_eq!(u.chars().count(), USER_NAME_MAX);
        assert!(u.ends_with('…'));
        assert_eq!(user_name(&"y".repeat(64)), "y".repeat(64));
        assert_eq!(clean("abc", 3), "abc");
        assert_eq!(clean("abcd", 3), "ab…");
    }

    #[test]
    fn prompt_text_loses_escape_sequences() {
        assert_eq!(
            for_prompt("https://idp/device?c=\x1b]0;pwned\x07X\r\n", 200),
            "https://idp/device?c=]0;pwnedX"
        );
    }
}
