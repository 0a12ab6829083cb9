//! A short run of every fuzz target inside the ordinary test suite (stable toolchain, no
//! cargo-fuzz): each target's corpus as committed in `fuzz/corpus/<target>/`, then a few
//! thousand deterministic mutations of it. The real campaign is `fuzz/run.sh`; this keeps the
//! targets compiling, their corpora readable, and catches a regression on inputs close to them.

use std::{fs, panic, path::PathBuf};

use reports_core::fuzzing::TARGETS;

/// Mutations per target, each a few small edits of a corpus entry: a few thousand of the short
/// inputs, fewer of whole reports, which take milliseconds each in an unoptimised build.
fn mutations(target: &str) -> usize {
    match target {
        "request_body" | "patch" => 300,
        _ => 2_000,
    }
}

/// Bytes that mean something to one parser or another, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"%",
    b"%00",
    b"%ff",
    b"%2C",
    b"+",
    b"&",
    b"=",
    b"==",
    b"!=",
    b"!",
    b",",
    b"\\",
    b"(",
    b")",
    b" in ",
    b" notin ",
    b">",
    b"<",
    b";",
    b"q=0",
    b"*/*",
    b"/",
    b"//",
    b"?",
    b"..",
    b"\0",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"- ",
    b"\n",
    b"&a ",
    b"*a",
    b"~1",
    b"-",
    b"1e400",
    b"-0",
    b"18446744073709551616",
    b"null",
    b"\xef\xbb\xbf",
    b"\xff",
];

/// xorshift64: a fixed, dependency-free sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four edits: flip a bit, drop, duplicate or overwrite a span, splice in a token or a
/// piece of another corpus entry.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(64)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len());
                let end = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let byte = rng.next() as u8;
                if at < out.len() {
                    out[at] = byte;
                } else {
                    out.push(byte);
                }
            }
        }
    }
    out
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    files.iter().map(|f| fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))).collect()
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    for (name, target) in TARGETS {
        let corpus = corpus(name);
        assert!(!corpus.is_empty(), "the corpus of {name} is empty");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let mutations = (0..mutations(name)).map(|i| mutate(&mut rng, &corpus[i % corpus.len()], &corpus));
        for (i, input) in corpus.iter().cloned().chain(mutations).enumerate() {
            if panic::catch_unwind(|| target(&input)).is_err() {
                panic!("fuzz target {name} panicked on input {i}: {:?}", String::from_utf8_lossy(&input));
            }
        }
    }
}
