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

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::UnicodeNormalization;
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
    fold_into(text, &mut out, None);
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
    fold_into(text, &mut mapped.text, Some(&mut mapped.origin));
    mapped
}

/// The folding itself, appending to `out` (and to `origin` when asked).
fn fold_into(text: &str, out: &mut String, mut origin: Option<&mut Vec<Range<usize>>>) {
    if text.is_ascii() {
        // Fast path: NFKC and simplification change nothing in ASCII, and
        // only letters and digits are kept.
        for (i, b) in text.bytes().enumerate() {
            if b.is_ascii_alphanumeric() {
                out.push(char::from(b.to_ascii_lowercase()));
                if let Some(origin) = origin.as_deref_mut() {
                    origin.push(i..i + 1);
                }
            }
        }
        return;
    }
    let mut cjk = false;
    let mut segments = Segments::new(text);
    while let Some((bytes, chars)) = segments.next_segment() {
        let segment = &text[bytes];
        for c in segment.nfkc() {
            for c in c.to_lowercase() {
                if dropped(c) {
                    continue;
                }
                cjk |= c >= '\u{2E80}';
                out.push(c);
                if let Some(origin) = origin.as_deref_mut() {
                    origin.push(chars.clone());
                }
            }
        }
    }
    if cjk {
        // One char for one char, so `origin` stays aligned.
        *out = fast2s::convert(out);
    }
}

/// Splits a text into base characters each followed by its combining marks,
/// the units NFKC is applied to; yields each unit's byte range and char
/// index range.
struct Segments<'a> {
    /// Remaining chars with their byte offsets.
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    /// Length of the whole text in bytes.
    len: usize,
    /// Char index of the next char.
    index: usize,
}

impl<'a> Segments<'a> {
    /// Segments of `text`.
    fn new(text: &'a str) -> Segments<'a> {
        Segments {
            chars: text.char_indices().peekable(),
            len: text.len(),
            index: 0,
        }
    }

    /// The next unit, or `None` at the end.
    fn next_segment(&mut self) -> Option<(Range<usize>, Range<usize>)> {
        let (start, _) = self.chars.next()?;
        let first = self.index;
        self.index += 1;
        let mut end = self.len;
        while let Some(&(at, c)) = self.chars.peek() {
            if canonical_combining_class(c) == 0 {
                end = at;
                break;
            }
            self.chars.next();
            self.index += 1;
        }
        Some((start..end, first..self.index))
    }
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
