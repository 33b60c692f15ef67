//! The text the gateway reads: SQL with `?` placeholders, and HTTP basic authentication's
//! base64.

/// `query` with its `?` placeholders (JDBC's and ADBC's) numbered `$1`, `$2`, … as
/// DataFusion takes them; a `?` inside a string, a quoted name or a comment stays.
pub(super) fn number_placeholders(query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 8);
    let mut chars = query.chars().peekable();
    let mut n = 0;
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\'' | '"' => {
                // To the closing quote; a doubled quote is an escaped one and stays inside.
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == c {
                        if chars.peek() == Some(&c) {
                            out.push(chars.next().expect("peeked"));
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for d in chars.by_ref() {
                    out.push(d);
                    if last == '*' && d == '/' {
                        break;
                    }
                    last = d;
                }
            }
            '?' => {
                out.pop();
                n += 1;
                out.push_str(&format!("${n}"));
            }
            _ => {}
        }
    }
    out
}

/// Standard base64 (with padding), as HTTP basic authentication encodes `user:password`.
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_placeholders_outside_strings_names_and_comments() {
        assert_eq!(
            number_placeholders("select '?', \"a?\" from t where x < ? and y = ? -- ?\n and z = ?"),
            "select '?', \"a?\" from t where x < $1 and y = $2 -- ?\n and z = $3"
        );
        assert_eq!(
            number_placeholders("select 'it''s ?' /* ? */ , ?"),
            "select 'it''s ?' /* ? */ , $1"
        );
        assert_eq!(number_placeholders("select $1"), "select $1");
    }

    #[test]
    fn base64_decodes_padded_and_unpadded_and_refuses_other_characters() {
        assert_eq!(base64_decode("YW5uOnMzY3JldA==").unwrap(), b"ann:s3cret");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("a*").is_none());
    }
}
