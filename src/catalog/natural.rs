use std::cmp::Ordering;

/// Compare names the way people count: `img2` < `img10`, case-insensitively first.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.is_empty(), y.is_empty()) {
            (true, true) => break,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (cx, rx) = split_chunk(x);
        let (cy, ry) = split_chunk(y);
        let ord = match (is_digits(cx), is_digits(cy)) {
            (true, true) => {
                let (tx, ty) = (cx.trim_start_matches('0'), cy.trim_start_matches('0'));
                tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty))
            }
            _ => cx.to_lowercase().cmp(&cy.to_lowercase()),
        };
        if ord != Ordering::Equal {
            return ord;
        }
        (x, y) = (rx, ry);
    }
    // Equal under the loose order (`a01` vs `a1`, `A` vs `a`): fall back to plain bytes.
    a.cmp(b)
}

fn is_digits(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

fn split_chunk(s: &str) -> (&str, &str) {
    let digit = is_digits(s);
    let end = s
        .char_indices()
        .find(|(_, c)| c.is_ascii_digit() != digit)
        .map_or(s.len(), |(i, _)| i);
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        let mut names = vec!["img10.png", "img2.png", "Img1.png", "img02.png", "a.png"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["a.png", "Img1.png", "img02.png", "img2.png", "img10.png"]
        );
    }

    #[test]
    fn prefix_sorts_first() {
        assert_eq!(natural_cmp("scan", "scan1"), Ordering::Less);
        assert_eq!(natural_cmp("x9", "x9"), Ordering::Equal);
    }
}
