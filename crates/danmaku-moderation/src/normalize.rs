//! Text normalisation for word matching: the one folding applied both to
//! blocked and allowed words when they are added and to every post, so that
//! the trivial disguises of a word (full-width letters, mixed case, spaces,
//! dots or zero-width characters between its letters, traditional
//! characters) still match it.
//!
//! The folded text is only ever matched, never shown: a post is published
//! as written, with at most some of its original characters masked. For
//! masking, [`fold_mapped`] also says which original characters each folded
//! character came from.

use std::ops::Range;
use std::sync::LazyLock;

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// Folds `text` for matching: NFKC (full-width and other compatibility
/// forms become their plain letters), lower case, traditional Chinese
/// characters made simplified, and every character dropped that is not
/// part of a word: white space, punctuation, symbols, and invisible format
/// characters (zero-width spaces and joiners, word joiner, BOM, variation
/// selectors, Unicode category Cf).
///
/// Dropping all separators, not only those between CJK characters, is
/// deliberate: it is the one rule that also catches `f u c k` and `f.u.c.k`,
/// at the price of matching across Latin word boundaries (`this hit`
/// holds `shit`). The allow-list is the answer to such false positives.
///
/// NFKC is applied per base character and its combining marks, so two base
/// characters never compose with each other (conjoining Hangul jamo stay
/// apart); Chinese, Japanese and Latin text are unaffected by this.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    fold_into(text, &mut out);
    out
}

/// A folded text and, for each of its characters in order, the range of
/// original character indices (not bytes) it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mapped {
    /// The folded text, as [`normalize`] returns it.
    pub(crate) text: String,
    /// One original char range per char of `text`.
    pub(crate) origin: Vec<Range<usize>>,
}

/// [`normalize`], also mapping each folded character back to the original
/// characters it came from. Costs a vector, so it is only called when a
/// post needs masking.
pub(crate) fn fold_mapped(text: &str) -> Mapped {
    let mut mapped = Mapped {
        text: String::with_capacity(text.len()),
        origin: Vec::with_capacity(text.len()),
    };
    fold_into(text, &mut mapped);
    mapped
}

/// Where folded characters go: a plain string, or a [`Mapped`]. A trait
/// rather than an `Option`, so the plain case is compiled without the
/// mapping.
trait Sink {
    /// Appends `c`, folded from the original chars `from`.
    fn push(&mut self, c: char, from: &Range<usize>);
}

impl Sink for String {
    fn push(&mut self, c: char, _: &Range<usize>) {
        String::push(self, c);
    }
}

impl Sink for Mapped {
    fn push(&mut self, c: char, from: &Range<usize>) {
        self.text.push(c);
        self.origin.push(from.clone());
    }
}

/// The folding itself, appending to `out`.
fn fold_into(text: &str, out: &mut impl Sink) {
    if text.is_ascii() {
        // Fast path: NFKC and simplification change nothing in ASCII, and
        // only letters and digits are kept.
        for (i, b) in text.bytes().enumerate() {
            if b.is_ascii_alphanumeric() {
                out.push(char::from(b.to_ascii_lowercase()), &(i..i + 1));
            }
        }
        return;
    }
    // NFKC is applied to each base character with the combining marks that
    // follow it; most characters have none and take a shortcut.
    let mut chars = text.char_indices().peekable();
    let mut index = 0;
    while let Some((start, c)) = chars.next() {
        let first = index;
        index += 1;
        let mut end = start + c.len_utf8();
        while let Some(&(at, next)) = chars.peek() {
            if is_starter(next) {
                break;
            }
            chars.next();
            index += 1;
            end = at + next.len_utf8();
        }
        let from = first..index;
        if index - first == 1 {
            if c.is_ascii() {
                if c.is_ascii_alphanumeric() {
                    out.push(c.to_ascii_lowercase(), &from);
                }
                continue;
            }
            // Common ideographs: NFKC-stable, caseless, never dropped.
            if is_ideograph(c) {
                out.push(simplified(c), &from);
                continue;
            }
            if is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes {
                fold_char(c, out, &from);
                continue;
            }
        }
        if let Some(segment) = text.get(start..end) {
            for c in segment.nfkc() {
                fold_char(c, out, &from);
            }
        }
    }
}

/// Whether `c` starts a new NFKC unit (canonical combining class 0),
/// answered without a table for the common cases.
fn is_starter(c: char) -> bool {
    c.is_ascii() || is_ideograph(c) || canonical_combining_class(c) == 0
}

/// Lower case, drop or simplify one NFKC character.
fn fold_char(c: char, out: &mut impl Sink, from: &Range<usize>) {
    for c in c.to_lowercase() {
        if !dropped(c) {
            out.push(simplified(c), from);
        }
    }
}

/// CJK Unified Ideographs and Extension A: most of a Chinese text, and
/// characters the slow path would leave unchanged except for simplification.
fn is_ideograph(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}')
}

/// The simplified form of a traditional Chinese character, or `c`.
///
/// The table is taken once from `fast2s`, one character at a time and so
/// without its few context rules (its `乾隆` keeps `乾`; here `乾` always
/// becomes `干`): for matching, a character should fold the same wherever
/// it stands. `fast2s` converts only characters of the Basic Multilingual
/// Plane, which the table covers; a bitmap answers most lookups.
fn simplified(c: char) -> char {
    static TABLE: LazyLock<T2s> = LazyLock::new(T2s::build);
    if (c as u32) < 0x2E80 {
        return c;
    }
    TABLE.get(c)
}

/// Traditional → simplified, for the Basic Multilingual Plane.
struct T2s {
    /// Bit `c` set when `c` has a simplified form.
    has: Vec<u64>,
    /// (traditional, simplified), sorted.
    pairs: Vec<(char, char)>,
}

impl T2s {
    /// Asks `fast2s` about every character from U+2E80 to U+FFFF (a few
    /// milliseconds, once).
    fn build() -> T2s {
        let mut has = vec![0u64; 0x1_0000 / 64];
        let mut pairs = Vec::new();
        let mut buf = [0u8; 4];
        for c in ('\u{2E80}'..='\u{FFFF}').filter(|c| c.len_utf8() == 3) {
            let converted = fast2s::convert(c.encode_utf8(&mut buf));
            let mut chars = converted.chars();
            if let (Some(s), None) = (chars.next(), chars.next()) {
                if s != c {
                    pairs.push((c, s));
                    let i = c as usize;
                    if let Some(word) = has.get_mut(i / 64) {
                        *word |= 1 << (i % 64);
                    }
                }
            }
        }
        T2s { has, pairs }
    }

    /// The simplified form of `c`, or `c`.
    fn get(&self, c: char) -> char {
        let i = c as usize;
        let marked = self
            .has
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0);
        if !marked {
            return c;
        }
        self.pairs
            .binary_search_by_key(&c, |&(t, _)| t)
            .ok()
            .and_then(|at| self.pairs.get(at))
            .map_or(c, |&(_, s)| s)
    }
}

/// Forces the one-time build of the simplification table, so the first
/// post does not pay for it.
pub(crate) fn warm_up() {
    simplified('\u{5B78}');
}

/// Whether `c` is left out of the matching text: anything that is not part
/// of a word, so that it can be put between a word's letters to hide it.
fn dropped(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_alphanumeric();
    }
    match c {
        // Zero-width space, joiners, word joiner and invisible operators,
        // BOM, Mongolian vowel separator, variation selectors, combining
        // grapheme joiner, Hangul fillers.
        '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{FEFF}'
        | '\u{180E}'
        | '\u{180B}'..='\u{180F}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{E0100}'..='\u{E01EF}'
        | '\u{034F}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{3164}'
        | '\u{FFA0}' => true,
        c if c.is_whitespace() => true,
        // Other: format (Cf), control, private-use and unassigned.
        c => matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Punctuation
                | GeneralCategoryGroup::Symbol
                | GeneralCategoryGroup::Separator
                | GeneralCategoryGroup::Other
        ),
    }
}

/// A stable 64-bit hash (FNV-1a) of `text`, the same on every instance and
/// every run, unlike std's randomly seeded hasher; used in the fleet-wide
/// duplicate key. Not collision-resistant against a chosen text, which is
/// harmless there: a collision only refuses one's own repeated comment.
pub(crate) fn stable_hash(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    text.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_width_case_and_separators() {
        assert_eq!(normalize("ｆｕｃｋ"), "fuck");
        assert_eq!(normalize("FuCk"), "fuck");
        assert_eq!(normalize("f u.c_k!"), "fuck");
        assert_eq!(normalize("f\u{200B}u\u{200D}c\u{FEFF}k"), "fuck");
        assert_eq!(normalize("操 你"), "操你");
        assert_eq!(normalize("操.你"), "操你");
        assert_eq!(normalize("操_你"), "操你");
        assert_eq!(normalize("操，你。"), "操你");
        assert_eq!(normalize("操\u{FE0F}你★"), "操你");
    }

    #[test]
    fn folds_traditional_to_simplified() {
        assert_eq!(normalize("學習"), "学习");
        assert_eq!(normalize("學 習"), "学习");
        assert_eq!(normalize("学习"), "学习");
    }

    #[test]
    fn simplification_ignores_context() {
        assert_eq!(normalize("乾隆"), normalize("干隆"));
        assert_eq!(normalize("乾淨"), "干净");
    }

    #[test]
    fn composes_combining_marks() {
        // "é" as e + combining acute, and precomposed, fold alike.
        assert_eq!(normalize("cafe\u{301}"), normalize("café"));
        assert_eq!(normalize("café"), "café");
    }

    #[test]
    fn maps_back_to_original_chars() {
        let m = fold_mapped("a ｂ\u{200B}C");
        assert_eq!(m.text, "abc");
        assert_eq!(m.origin, vec![0..1, 2..3, 4..5]);
        let m = fold_mapped("e\u{301}x");
        assert_eq!(m.text, "éx");
        assert_eq!(m.origin, vec![0..2, 2..3]);
        let m = fold_mapped("A.b");
        assert_eq!(m.text, "ab");
        assert_eq!(m.origin, vec![0..1, 2..3]);
        // One original char that folds into several keeps its range for each.
        let m = fold_mapped("㎏x");
        assert_eq!(m.text, "kgx");
        assert_eq!(m.origin, vec![0..1, 0..1, 1..2]);
    }

    #[test]
    fn hash_is_stable() {
        // FNV-1a reference values.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(stable_hash("ab"), stable_hash("ba"));
    }

    #[test]
    fn nothing_left_is_empty() {
        assert_eq!(normalize(" .,!\u{200B} "), "");
        assert_eq!(normalize(""), "");
    }
}
