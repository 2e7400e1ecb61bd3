//! Arbitrary descriptor chains, rings and request headers in guest memory,
//! served by the vhost-user-blk backend's `BlkServer`: see `../harness.rs`
//! for the input format and the checks. Run by `scripts/fuzz-requests`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    /// Guest memory and servers, set up once and reset for each input.
    static HARNESS: RefCell<harness::Harness> = RefCell::new(harness::Harness::new());
}

fuzz_target!(|input: &[u8]| {
    HARNESS.with(|harness| {
        harness.borrow_mut().run(input);
    });
});
