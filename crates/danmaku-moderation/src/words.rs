//! The blocked and allowed words, and the automaton that finds them all in
//! one pass over a folded post.
//!
//! A word list is immutable once built: an edit builds a new one (tens of
//! milliseconds for 20,000 words) and swaps it in, so a post is matched
//! against a complete list without waiting for the edit.

use std::collections::BTreeMap;
use std::ops::Range;

use daachorse::CharwiseDoubleArrayAhoCorasick;

use crate::normalize::normalize;
use crate::rules::{FieldError, WordAction};

/// What an automaton pattern is, stored as its value.
const BLOCK: u32 = 0;
/// See [`BLOCK`].
const MASK: u32 = 1;
/// See [`BLOCK`].
const ALLOW: u32 = 2;

/// Both word lists, keyed by folded form (so `FUCK` and `ｆｕｃｋ` are one
/// entry), with the words as given for listing, and their automaton.
#[derive(Default)]
pub(crate) struct Words {
    /// Folded form → (word as given, action).
    block: BTreeMap<String, (String, WordAction)>,
    /// Folded form → word as given.
    allow: BTreeMap<String, String>,
    /// Every folded word once; `None` when both lists are empty.
    matcher: Option<CharwiseDoubleArrayAhoCorasick<u32>>,
}

impl std::fmt::Debug for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Words")
            .field("block", &self.block.len())
            .field("allow", &self.allow.len())
            .finish_non_exhaustive()
    }
}

/// What the words found in one post.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// Byte ranges of the folded text where a `block` word outside every
    /// allowed word matched, in order.
    pub(crate) block: Vec<Range<usize>>,
    /// Byte ranges of the folded text to mask, in order, possibly
    /// overlapping.
    pub(crate) mask: Vec<Range<usize>>,
    /// The original characters behind each of `mask`, once
    /// [`Found::keep_spelled`] has run.
    pub(crate) mask_chars: Vec<Range<usize>>,
}

impl Found {
    /// Drops the Latin matches that straddle the original text's words
    /// rather than spell one out ([`spells_a_word`]).
    pub(crate) fn keep_spelled(&mut self, original: &str, folded: &str) {
        if self.block.is_empty() && self.mask.is_empty() {
            return;
        }
        // One pass maps every span back to the original characters.
        let spans: Vec<Range<usize>> = self.block.iter().chain(&self.mask).cloned().collect();
        let origins = crate::normalize::origins(original, &spans);
        let kept = |span: &Range<usize>, origin: &Range<usize>| {
            let latin = folded
                .get(span.clone())
                .is_some_and(|w| w.bytes().all(|b| b.is_ascii_alphanumeric()));
            !latin || spells_a_word(original, origin.clone())
        };
        let (block_origins, mask_origins) = origins.split_at(self.block.len());
        let mut block = Vec::new();
        for (span, origin) in self.block.iter().zip(block_origins) {
            if kept(span, origin) {
                block.push(span.clone());
            }
        }
        let (mut mask, mut mask_chars) = (Vec::new(), Vec::new());
        for (span, origin) in self.mask.iter().zip(mask_origins) {
            if kept(span, origin) {
                mask.push(span.clone());
                mask_chars.push(origin.clone());
            }
        }
        self.block = block;
        self.mask = mask;
        self.mask_chars = mask_chars;
    }
}

/// Whether a Latin match over the original characters `at` spells a word
/// out rather than straddling two. Separators are dropped before matching
/// so that `f u c k` and `f.u.c.k` are caught; but then `this hit` would
/// hold `shit`. So a Latin match that crosses a separator (space,
/// punctuation, symbol: not the invisible characters, which hide inside a
/// word) counts only when it begins and ends on word edges: it covers whole
/// words, as a spaced-out word does. Inside one word, a match always
/// counts. Chinese and Japanese put no spaces between words, so matches in
/// them are never held to this.
fn spells_a_word(original: &str, at: Range<usize>) -> bool {
    let (mut before, mut after, mut crosses) = (None, None, false);
    for (i, c) in original.chars().enumerate() {
        if i + 1 == at.start {
            before = Some(c);
        } else if at.contains(&i) {
            crosses |= c.is_whitespace() || (!c.is_alphanumeric() && !is_invisible(c));
        } else if i == at.end {
            after = Some(c);
            break;
        }
    }
    !crosses
        || (!before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric))
}

/// Characters that render as nothing, which an evader puts inside a word.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
            | '\u{180E}'
            | '\u{00AD}'
            | '\u{034F}'
            | '\u{FE00}'..='\u{FE0F}'
    )
}

impl Words {
    /// Builds the lists from words as given; words that fold to nothing are
    /// left out, as they could never match. A word in both lists is allowed.
    pub(crate) fn build<B, A>(block: B, allow: A) -> Result<Words, FieldError>
    where
        B: IntoIterator<Item = (String, WordAction)>,
        A: IntoIterator<Item = String>,
    {
        let mut words = Words::default();
        for (word, action) in block {
            words.insert_block(&word, action);
        }
        for word in allow {
            words.insert_allow(&word);
        }
        words.rebuild()?;
        Ok(words)
    }

    /// A copy of the lists, for an edit; the automaton is rebuilt after.
    pub(crate) fn edited(&self) -> Words {
        Words {
            block: self.block.clone(),
            allow: self.allow.clone(),
            matcher: None,
        }
    }

    /// Adds or changes a blocked word.
    pub(crate) fn insert_block(&mut self, word: &str, action: WordAction) {
        let key = normalize(word);
        if !key.is_empty() {
            self.block.insert(key, (word.to_owned(), action));
        }
    }

    /// Removes a blocked word (any spelling that folds alike).
    pub(crate) fn remove_block(&mut self, word: &str) {
        self.block.remove(&normalize(word));
    }

    /// Adds an allowed word.
    pub(crate) fn insert_allow(&mut self, word: &str) {
        let key = normalize(word);
        if !key.is_empty() {
            self.allow.insert(key, word.to_owned());
        }
    }

    /// Removes an allowed word.
    pub(crate) fn remove_allow(&mut self, word: &str) {
        self.allow.remove(&normalize(word));
    }

    /// Builds the automaton over the current lists.
    pub(crate) fn rebuild(&mut self) -> Result<(), FieldError> {
        let mut patterns: BTreeMap<&str, u32> = BTreeMap::new();
        for (key, (_, action)) in &self.block {
            let value = match action {
                WordAction::Block => BLOCK,
                WordAction::Mask => MASK,
            };
            patterns.insert(key.as_str(), value);
        }
        for key in self.allow.keys() {
            patterns.insert(key.as_str(), ALLOW);
        }
        self.matcher = if patterns.is_empty() {
            None
        } else {
            Some(
                CharwiseDoubleArrayAhoCorasick::with_values(patterns).map_err(|e| FieldError {
                    field: "word",
                    message: format!("the word list cannot be built: {e}"),
                })?,
            )
        };
        Ok(())
    }

    /// Blocked words as given, sorted.
    pub(crate) fn blocklist(&self) -> Vec<(String, WordAction)> {
        let mut list: Vec<_> = self.block.values().cloned().collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Allowed words as given, sorted.
    pub(crate) fn allowlist(&self) -> Vec<String> {
        let mut list: Vec<_> = self.allow.values().cloned().collect();
        list.sort();
        list
    }

    /// Finds the words in a folded text. A blocked or masked word found
    /// entirely inside an allowed word found in the same text does not
    /// count: with `操` blocked and `体操` allowed, `体操` passes.
    /// Allocates nothing when nothing is found.
    pub(crate) fn scan(&self, folded: &str) -> Found {
        let mut found = Found::default();
        let Some(matcher) = &self.matcher else {
            return found;
        };
        let mut allowed: Vec<Range<usize>> = Vec::new();
        let mut hits: Vec<(Range<usize>, u32)> = Vec::new();
        for m in matcher.find_overlapping_iter(folded) {
            if m.value() == ALLOW {
                allowed.push(m.start()..m.end());
            } else {
                hits.push((m.start()..m.end(), m.value()));
            }
        }
        for (span, kind) in hits {
            if allowed
                .iter()
                .any(|a| a.start <= span.start && span.end <= a.end)
            {
                continue;
            }
            if kind == BLOCK {
                found.block.push(span);
            } else {
                found.mask.push(span);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(block: &[(&str, WordAction)], allow: &[&str]) -> Words {
        Words::build(
            block.iter().map(|(w, a)| ((*w).to_owned(), *a)),
            allow.iter().map(|w| (*w).to_owned()),
        )
        .expect("builds")
    }

    /// Whether `text` is blocked, as the pipeline decides it.
    fn blocked(w: &Words, text: &str) -> bool {
        let folded = normalize(text);
        let mut found = w.scan(&folded);
        found.keep_spelled(text, &folded);
        !found.block.is_empty()
    }

    #[test]
    fn latin_matches_must_spell_a_word_out_not_straddle_two() {
        let w = words(
            &[("shit", WordAction::Block), ("ass", WordAction::Block)],
            &[],
        );
        for straddling in ["this hit", "this, hit", "was sad", "Las Salinas"] {
            assert!(!blocked(&w, straddling), "{straddling:?}");
        }
        for spelled in [
            "shit",
            "SHIT!",
            "oh shit.",
            "s h i t",
            "s.h.i.t happens",
            "sh it",
            "s\u{200B}hit",
            "bullshit",
            "ass",
            "a s s",
        ] {
            assert!(blocked(&w, spelled), "{spelled:?}");
        }
        // Chinese puts no spaces between words: separators never excuse it.
        let w = words(&[("操你", WordAction::Block)], &[]);
        assert!(blocked(&w, "我操 你"));
        assert!(blocked(&w, "我操.你好"));
    }

    #[test]
    fn allowed_words_contain_blocked_ones() {
        let w = words(&[("操", WordAction::Block)], &["体操", "操作"]);
        assert!(!blocked(&w, "体操"));
        assert!(!blocked(&w, "我在操作"));
        assert!(blocked(&w, "操"));
        assert!(blocked(&w, "操你"));
        // An allowed word elsewhere does not excuse a blocked one.
        assert!(blocked(&w, "体操 操"));
    }

    #[test]
    fn a_match_overlapping_an_allowed_word_still_counts() {
        let w = words(&[("操你", WordAction::Block)], &["体操"]);
        assert!(blocked(&w, "体操你"));
    }

    #[test]
    fn mask_spans_are_folded_byte_ranges() {
        let w = words(&[("bad", WordAction::Mask)], &[]);
        let found = w.scan("abadbad");
        assert!(found.block.is_empty());
        assert_eq!(found.mask, vec![1..4, 4..7]);
    }

    #[test]
    fn spellings_that_fold_alike_are_one_entry() {
        let mut w = words(&[("FUCK", WordAction::Block)], &[]);
        w.insert_block("ｆｕｃｋ", WordAction::Mask);
        assert_eq!(
            w.blocklist(),
            vec![("ｆｕｃｋ".to_owned(), WordAction::Mask)]
        );
        w.remove_block("Fuck");
        w.rebuild().expect("builds");
        assert!(w.blocklist().is_empty());
        assert_eq!(w.scan("fuck"), Found::default());
    }

    #[test]
    fn empty_lists_match_nothing() {
        let w = words(&[], &[]);
        assert_eq!(w.scan("anything"), Found::default());
    }
}
