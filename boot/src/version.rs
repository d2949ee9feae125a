//! Ordering version strings the way boot loaders and package managers
//! do, so that "the newest kernel" means what an administrator expects
//! (`6.10.0` after `6.9.2`, `6.1.0-rc1` ... `~` before a release).

use std::cmp::Ordering;

/// Compares two versions: runs of digits numerically, runs of letters
/// by bytes, a digit run newer than a letter run, other characters only
/// separating runs; `~` sorts before anything, even the end, so that
/// `1.0~rc1` < `1.0`. The rules of RPM's `rpmvercmp`, which systemd's
/// `strverscmp_improved` follows for these cases.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let separator = |c: &u8| !c.is_ascii_alphanumeric() && *c != b'~';
    loop {
        while a.first().is_some_and(separator) {
            a = &a[1..];
        }
        while b.first().is_some_and(separator) {
            b = &b[1..];
        }
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let numeric = x.is_ascii_digit();
                if numeric != y.is_ascii_digit() {
                    return if numeric {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    };
                }
                let run = |s: &[u8]| {
                    s.iter()
                        .take_while(|c| {
                            if numeric {
                                c.is_ascii_digit()
                            } else {
                                c.is_ascii_alphabetic()
                            }
                        })
                        .count()
                };
                let (na, nb) = (run(a), run(b));
                let (ra, rb) = (&a[..na], &b[..nb]);
                let order = if numeric {
                    let trim = |r: &[u8]| {
                        let zeros = r.iter().take_while(|c| **c == b'0').count();
                        r[zeros..].to_vec()
                    };
                    let (ta, tb) = (trim(ra), trim(rb));
                    ta.len().cmp(&tb.len()).then_with(|| ta.cmp(&tb))
                } else {
                    ra.cmp(rb)
                };
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[na..];
                b = &b[nb..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_rpmvercmp() {
        let ascending = [
            "1.0~rc1",
            "1.0",
            "1.0a",
            "1.0.1",
            "1.1",
            "6.1.0-13-amd64",
            "6.1.0-28-amd64",
            "6.9.2",
            "6.10.0",
            "6.12.0~rc1",
            "6.12.0",
            "6.12.0-1",
            "6.12.9-amd64",
            "6.12.10",
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                assert_eq!(compare_versions(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(compare_versions("01", "1"), Ordering::Equal);
        assert_eq!(compare_versions("1.0", "1_0"), Ordering::Equal);
    }
}
