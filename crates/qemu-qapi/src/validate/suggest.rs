//! Suggestions for misspelt names: the closest command, member or enum value.

/// The edit distance between `a` and `b`, in characters: insertions,
/// deletions, substitutions and transpositions of neighbours (`qocde` is one
/// edit from `qcode`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the optimal string alignment table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `name` by edit distance, if it is close: at most
/// a third of the name's length away (and at least 1, at most 3 edits). Ties
/// go to the candidate whose length is closest, then to the first in
/// alphabetical order.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let len = name.chars().count();
    let limit = (len / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c.chars().count().abs_diff(len), c))
        .filter(|&(d, _, _)| d <= limit)
        .min()
        .map(|(_, _, c)| c.to_owned())
}
