//! Text normalisation for word matching: the one folding applied both to
//! blocked and allowed words when they are added and to every post, so that
//! the trivial disguises of a word (full-width letters, mixed case, spaces,
//! dots or zero-width characters between its letters, traditional
//! characters) still match it.
//!
//! The folded text is only ever matched, never shown: a post is published
//! as written, with at most some of its original characters masked. For
//! masking, [`origins`] says which original characters each folded
//! character came from.

use std::ops::Range;
use std::sync::LazyLock;

use unicode_normalization::char::{canonical_combining_class, compose};
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
/// apart), except that a combining mark NFKC leaves behind is composed with
/// the character before it; Chinese, Japanese and Latin text are
/// unaffected by this.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    fold_into(text, &mut out);
    out
}

/// For each byte range of the folded `text` in `spans`, the range of
/// original character indices (not bytes) it came from: from the first
/// original character of its first folded character to the last of its
/// last, so spaces or invisible characters put between a word's letters lie
/// inside. An empty range for a span that matches nothing. Folds again
/// without building the folded text, so it costs little; only called when
/// a post needs masking.
pub(crate) fn origins(text: &str, spans: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut locate = Locate {
        spans,
        found: vec![None; spans.len()],
        at: 0,
        last: None,
    };
    fold_into(text, &mut locate);
    locate
        .found
        .into_iter()
        .map(|r| r.unwrap_or(0..0))
        .collect()
}

/// Where folded characters go: a plain string, or a [`Locate`] that only
/// follows offsets. A trait, so each case is compiled on its own.
trait Sink {
    /// Appends `c`, folded from the original chars `from`.
    fn push(&mut self, c: char, from: &Range<usize>);

    /// Composes the last char with the combining `mark` from `from`, if
    /// Unicode has such a composition; says whether it did.
    fn compose_last(&mut self, mark: char, from: &Range<usize>) -> bool;
}

/// `text`'s last char composed with `mark`, replaced in place.
fn compose_into(text: &mut String, mark: char) -> bool {
    let Some(last) = text.chars().next_back() else {
        return false;
    };
    let Some(composed) = compose(last, mark) else {
        return false;
    };
    text.pop();
    text.push(composed);
    true
}

impl Sink for String {
    fn push(&mut self, c: char, _: &Range<usize>) {
        String::push(self, c);
    }

    fn compose_last(&mut self, mark: char, _: &Range<usize>) -> bool {
        compose_into(self, mark)
    }
}

/// A sink that only follows the folded byte offset, noting which original
/// characters the folded bytes in `spans` came from.
struct Locate<'a> {
    /// Folded byte ranges.
    spans: &'a [Range<usize>],
    /// Per span, the original char range seen so far.
    found: Vec<Option<Range<usize>>>,
    /// Folded byte offset of the next char.
    at: usize,
    /// The last folded char and where it started, for compositions.
    last: Option<(char, usize)>,
}

impl Locate<'_> {
    /// Notes that the folded char at byte `at` came from `from`.
    fn note(&mut self, at: usize, from: &Range<usize>) {
        for (span, found) in self.spans.iter().zip(self.found.iter_mut()) {
            if span.contains(&at) {
                *found = Some(match found.take() {
                    None => from.clone(),
                    Some(r) => r.start.min(from.start)..r.end.max(from.end),
                });
            }
        }
    }
}

impl Sink for Locate<'_> {
    fn push(&mut self, c: char, from: &Range<usize>) {
        self.note(self.at, from);
        self.last = Some((c, self.at));
        self.at += c.len_utf8();
    }

    fn compose_last(&mut self, mark: char, from: &Range<usize>) -> bool {
        let Some((last, at)) = self.last else {
            return false;
        };
        let Some(composed) = compose(last, mark) else {
            return false;
        };
        self.note(at, from);
        self.last = Some((composed, at));
        self.at = at + composed.len_utf8();
        true
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
            // Common ideographs, kana and Hangul syllables: NFKC-stable,
            // caseless, never dropped.
            if is_plain_letter(c) {
                out.push(simplified(c), &from);
                continue;
            }
            // Full-width ASCII (`ｆ`, `！`): NFKC makes it ASCII.
            if let Some(ascii) = full_width_ascii(c) {
                if ascii.is_ascii_alphanumeric() {
                    out.push(ascii.to_ascii_lowercase(), &from);
                }
                continue;
            }
            // The commonest CJK punctuation: dropped.
            if is_cjk_punctuation(c) {
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
    c.is_ascii()
        || is_plain_letter(c)
        || full_width_ascii(c).is_some()
        || is_cjk_punctuation(c)
        || canonical_combining_class(c) == 0
}

/// Ideographs, hiragana and katakana (without the combining voicing
/// marks), Hangul syllables: letters that NFKC leaves alone, without case.
fn is_plain_letter(c: char) -> bool {
    is_ideograph(c)
        || matches!(c, '\u{3041}'..='\u{3096}' | '\u{30A1}'..='\u{30FA}' | '\u{AC00}'..='\u{D7A3}')
}

/// The ASCII character a full-width form (U+FF01–U+FF5E) stands for.
fn full_width_ascii(c: char) -> Option<char> {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0),
        _ => None,
    }
}

/// Ideographic comma and full stop, corner and white corner brackets.
fn is_cjk_punctuation(c: char) -> bool {
    matches!(c, '\u{3001}' | '\u{3002}' | '\u{300C}'..='\u{300F}')
}

/// Lower case, drop or simplify one NFKC character.
///
/// A combining mark left over from NFKC of its own unit (half-width `ﾞ`
/// becomes U+3099, which NFKC would have composed with the `カ` before it)
/// is composed with the character before it where Unicode has a
/// composition.
fn fold_char(c: char, out: &mut impl Sink, from: &Range<usize>) {
    for c in c.to_lowercase() {
        if dropped(c) {
            continue;
        }
        if canonical_combining_class(c) != 0 && out.compose_last(c, from) {
            continue;
        }
        out.push(simplified(c), from);
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
        assert_eq!(normalize("操、「你」！"), "操你");
        assert_eq!(normalize("ＡＢＣ！ｘ"), "abcx");
        assert_eq!(normalize("カタカナ ひらがな 한국"), "カタカナひらがな한국");
        // Half-width katakana and voicing marks still go through NFKC.
        assert_eq!(normalize("ｶﾞ"), "ガ");
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

    /// The original range of one folded span.
    fn one(text: &str, span: Range<usize>) -> Range<usize> {
        origins(text, &[span])
            .pop()
            .unwrap_or(usize::MAX..usize::MAX)
    }

    #[test]
    fn maps_back_to_original_chars() {
        // "abc" folded; each byte one char.
        let text = "a ｂ\u{200B}C";
        assert_eq!(normalize(text), "abc");
        assert_eq!(
            origins(text, &[0..1, 1..2, 2..3, 1..3]),
            vec![0..1, 2..3, 4..5, 2..5]
        );
        assert_eq!(origins("e\u{301}x", &[0..2, 2..3]), vec![0..2, 2..3]);
        assert_eq!(one("A.b", 0..2), 0..3);
        // A composition after NFKC covers both original chars.
        assert_eq!(normalize("ｶﾞx"), "ガx");
        assert_eq!(origins("ｶﾞx", &[0..3, 3..4]), vec![0..2, 2..3]);
        // One original char that folds into several.
        assert_eq!(normalize("㎏x"), "kgx");
        assert_eq!(origins("㎏x", &[1..2, 2..3]), vec![0..1, 1..2]);
        // CJK: three bytes a char.
        assert_eq!(one("你 笨 蛋", 3..9), 2..5);
        // A span past the end matches nothing.
        assert_eq!(one("ab", 5..6), 0..0);
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
