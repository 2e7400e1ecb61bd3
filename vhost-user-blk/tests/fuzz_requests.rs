//! The request-path fuzz harness (`vhost-user-blk/fuzz/harness.rs`) on
//! stable: the seed corpus replayed, hand-built inputs (well-formed
//! requests, loops, indirect tables, broken rings) with their outcomes
//! checked, and a few thousand inputs mutated from them. The coverage-guided
//! run is `scripts/fuzz-requests` (cargo-fuzz, nightly).
//!
//! `cargo test -p vhost-user-blk --test fuzz_requests -- --ignored
//! write_seed_corpus` rewrites the seed corpus from [`seeds`].

#[path = "../fuzz/harness.rs"]
mod harness;

use harness::{Builder, Flags, Harness, Summary, BATCHED, EVENT_IDX, RINGS};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Selectors of `Builder::request_type`.
const IN: u8 = 0;
const OUT: u8 = 1;
const FLUSH: u8 = 2;
const GET_ID: u8 = 3;
const DISCARD: u8 = 4;
const UNKNOWN: u8 = 5;

/// Descriptor flags: (NEXT, WRITE, INDIRECT).
const READ_NEXT: Flags = (true, false, false);
const WRITE: Flags = (false, true, false);
const WRITE_NEXT: Flags = (true, true, false);
const INDIRECT: Flags = (false, false, true);

/// The seed corpus's directory.
fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/requests")
}

/// Runs `f` on another thread, failing if it has not finished after a
/// generous bound (a hang in the server would otherwise hang the test).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: pass its panic on.
            match worker.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the worker sent nothing and did not panic"),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after 300 s"),
    }
}

fn run(input: Vec<u8>) -> Summary {
    bounded("one input", move || Harness::new().run(&input))
}

/// Hand-built inputs, by name: the seed corpus.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "read",
            Builder::new(8, 0, 0).request(IN, 3, &[4096]).build(),
        ),
        (
            "every-type-batched-event-idx-wrapping",
            Builder::new(4, EVENT_IDX | BATCHED, 0xfffa)
                .request(IN, 0, &[512, 1024])
                .request(OUT, 8, &[2048])
                .request(FLUSH, 0, &[])
                .serve()
                .request(GET_ID, 0, &[20])
                .request(DISCARD, 0, &[16])
                .request(IN, 63, &[1024])
                .request(IN, u64::MAX / 512, &[512])
                .request(UNKNOWN, 1, &[512])
                .build(),
        ),
        (
            "next-loop",
            Builder::new(3, 0, 0)
                .header(0x9000, IN, 0)
                .descriptor(0, 0x9000, 16, READ_NEXT, 1)
                .descriptor(1, 0x9100, 512, WRITE_NEXT, 0)
                .avail(0)
                .build(),
        ),
        (
            "indirect",
            Builder::new(2, BATCHED, 0)
                .header(0x7100, IN, 5)
                .indirect(
                    0x7000,
                    &[
                        (0x7100, 16, READ_NEXT, 1),
                        (0x7200, 512, WRITE_NEXT, 2),
                        (0x7400, 1, WRITE, 0),
                    ],
                )
                .descriptor(0, 0x7000, 48, INDIRECT, 0)
                .avail(0)
                .build(),
        ),
        (
            "indirect-in-indirect",
            Builder::new(2, 0, 0)
                .header(0x7100, IN, 5)
                .indirect(
                    0x7000,
                    &[(0x7100, 16, READ_NEXT, 1), (0x7000, 32, INDIRECT, 0)],
                )
                .descriptor(0, 0x7000, 32, INDIRECT, 0)
                .avail(0)
                .build(),
        ),
        (
            "head-outside-the-table",
            Builder::new(4, 0, 0)
                .request(IN, 1, &[512])
                .avail(5000)
                .request(IN, 2, &[512])
                .build(),
        ),
        (
            "avail-idx-far-ahead",
            Builder::new(4, BATCHED, 0)
                .request(IN, 1, &[512])
                .avail_idx(100)
                .build(),
        ),
        (
            "buffers-across-the-gap-and-past-memory",
            Builder::new(5, 0, 0)
                .header(0x9000, IN, 0)
                .descriptor(0, 0x9000, 16, READ_NEXT, 1)
                .descriptor(1, 0x7f00, 512, WRITE_NEXT, 2)
                .descriptor(2, 0x9100, 1, WRITE, 0)
                .avail(0)
                .header(0x9200, OUT, 0)
                .descriptor(3, 0x9200, 16, READ_NEXT, 4)
                .descriptor(4, 0xcf00, 512, READ_NEXT, 5)
                .descriptor(5, 0xd000, 1, WRITE, 0)
                .avail(3)
                .build(),
        ),
        (
            "huge-lengths",
            Builder::new(6, EVENT_IDX, 7)
                .request(IN, 0, &[u32::MAX, u32::MAX])
                .request(OUT, 0, &[u32::MAX - 511])
                .request(GET_ID, 0, &[u32::MAX])
                .build(),
        ),
        (
            "queue-of-one",
            Builder::new(0, 0, 3)
                .request(IN, 1, &[512])
                .serve()
                .request(IN, 2, &[512])
                .build(),
        ),
        (
            "queue-of-1024",
            Builder::new(10, BATCHED | EVENT_IDX, 1000)
                .request(OUT, 4, &[512, 512])
                .request(IN, 4, &[1024])
                .build(),
        ),
        // Found by the fuzzer: a serve spun forever on each of these.
        (
            "avail-ring-at-address-zero",
            Builder::new(4, RINGS, 0)
                .rings(0x1000, 0, 0x5000)
                .request(IN, 1, &[512])
                .build(),
        ),
        (
            "avail-ring-entries-past-the-region",
            Builder::new(4, RINGS | BATCHED, 0)
                .rings(0, 0x7ffc, 0x5000)
                .avail_idx(1)
                .build(),
        ),
        (
            "rings-placed-by-the-driver",
            Builder::new(4, RINGS | BATCHED, 0)
                .rings(0x6000, 0x6400, 0x6800)
                .request(IN, 9, &[512])
                .build(),
        ),
    ]
}

#[test]
fn hand_built_inputs_are_served_and_pass_the_checks() {
    let outcomes: Vec<(&str, Summary)> = seeds()
        .into_iter()
        .map(|(name, input)| (name, run(input)))
        .collect();
    let get = |name: &str| {
        outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .unwrap()
    };
    for (name, summary) in &outcomes {
        assert!(summary.serves >= 1, "{name}: {summary:?}");
        if std::env::var_os("FUZZ_SEEDS_VERBOSE").is_some() {
            eprintln!("{name}: {summary:?}");
        }
    }
    let read = get("read");
    assert_eq!(
        (read.requests, read.errors, read.checked),
        (1, 0, 1),
        "{read:?}"
    );
    // IN, OUT, FLUSH, GET_ID served; DISCARD, a sector past the disk, an
    // overflowing one and an unknown type refused.
    let every = get("every-type-batched-event-idx-wrapping");
    assert_eq!((every.requests, every.errors), (8, 4), "{every:?}");
    assert_eq!(every.checked, every.serves, "{every:?}");
    // The loop is refused (no status byte), and answered.
    let looped = get("next-loop");
    assert_eq!((looped.requests, looped.errors), (1, 1), "{looped:?}");
    let indirect = get("indirect");
    assert_eq!((indirect.requests, indirect.errors), (1, 0), "{indirect:?}");
    let nested = get("indirect-in-indirect");
    assert_eq!((nested.requests, nested.errors), (1, 1), "{nested:?}");
    // Three chains popped, two answered: the head outside the table has no
    // used entry to go to.
    let outside = get("head-outside-the-table");
    assert_eq!((outside.requests, outside.errors), (2, 1), "{outside:?}");
    let ahead = get("avail-idx-far-ahead");
    assert_eq!(
        (ahead.requests, ahead.ring_errors),
        (0, ahead.serves),
        "{ahead:?}"
    );
    let gap = get("buffers-across-the-gap-and-past-memory");
    assert_eq!((gap.requests, gap.errors), (2, 2), "{gap:?}");
    // Chains of more than 4 GiB break off (virtio-queue stops following
    // them), and the write's 4 GiB lie beyond the disk: all refused.
    let huge = get("huge-lengths");
    assert_eq!((huge.requests, huge.errors), (3, 3), "{huge:?}");
    for name in [
        "avail-ring-at-address-zero",
        "avail-ring-entries-past-the-region",
    ] {
        let stalled = get(name);
        assert_eq!(
            (stalled.requests, stalled.ring_errors),
            (0, 1),
            "{name}: {stalled:?}"
        );
    }
    let placed = get("rings-placed-by-the-driver");
    assert_eq!((placed.requests, placed.errors), (1, 0), "{placed:?}");
}

#[test]
fn the_seed_corpus_replays() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= seeds().len(), "{} files", files.len());
    bounded("the seed corpus", move || {
        let mut harness = Harness::new();
        for file in files {
            let input = std::fs::read(&file).unwrap();
            // A panic names the input through the test's output.
            eprintln!("replaying {}", file.display());
            harness.run(&input);
        }
    });
}

/// xorshift64: a fixed sequence, so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `input` with a few bytes changed, inserted, removed or duplicated.
fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(5) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 if at < input.len() => input[at] = rng.next() as u8,
            2 => input.insert(at, rng.next() as u8),
            3 if at < input.len() => {
                input.remove(at);
            }
            _ => {
                let len = rng.below(16).min(input.len() - at.min(input.len()));
                let piece = input[at.min(input.len())..at.min(input.len()) + len].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, piece);
            }
        }
    }
    input
}

#[test]
fn mutated_and_random_inputs_pass_the_checks() {
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(_, input)| input).collect();
    let total = bounded("mutated inputs", move || {
        let mut harness = Harness::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut total = Summary::default();
        for i in 0..10_000 {
            let started = std::time::Instant::now();
            let input = if i % 10 == 9 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let seed = seeds[rng.below(seeds.len())].clone();
                mutate(&mut rng, seed)
            };
            if std::env::var_os("FUZZ_SEEDS_VERBOSE").is_some() {
                eprintln!("input {i}: {input:?}");
            }
            let summary = harness.run(&input);
            if std::env::var_os("FUZZ_SEEDS_VERBOSE").is_some() {
                eprintln!("input {i}: {:?}", started.elapsed());
            }
            total.serves += summary.serves;
            total.checked += summary.checked;
            total.requests += summary.requests;
            total.errors += summary.errors;
        }
        total
    });
    // The inputs reach the request path, and most serves are checked in
    // full.
    eprintln!("{total:?}");
    assert!(total.requests > 1000, "{total:?}");
    assert!(total.requests > total.errors, "{total:?}");
    assert!(total.checked * 2 > total.serves, "{total:?}");
}

#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, input) in seeds() {
        std::fs::write(dir.join(name), input).unwrap();
    }
}

#[test]
#[ignore = "replays the input file named by FUZZ_INPUT (a fuzzer's artifact)"]
fn replay_fuzz_input() {
    let path =
        PathBuf::from(std::env::var_os("FUZZ_INPUT").expect("FUZZ_INPUT names an input file"));
    // cargo test runs in the package's directory; a relative path may be
    // from the workspace's, where scripts/fuzz-requests leaves artifacts.
    let path = if path.is_relative() && !path.exists() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    } else {
        path
    };
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let summary = Harness::new().run(&input);
    eprintln!("{summary:?}");
}
